"""The bench tables: median tokens/s, min - max over rounds, and ratios to a reference row."""

from __future__ import annotations

from typing import Any

from .machine import machine_line


def format_table(result: dict[str, Any], reference: str | None = None) -> str:
    """Markdown tables: median tokens/s (min-max over rounds), and each row's ratio to ``reference``."""
    lines = [machine_line(result["machine"])]
    for title, key in (
        ("decode", "decode_tok_s"),
        (f"prefill, {result['prefill_len']} tokens", "prefill_tok_s"),
    ):
        rows = result[key]
        if not rows:
            continue
        ref = next((v["median"] for k, v in rows.items() if k in (reference, f"{reference}, B=1")), None)
        lines.append("")
        lines.append(f"| {title} | tokens/s (median) | min - max | vs {reference or '-'} |")
        lines.append("|---|---:|---:|---:|")
        for name, s in rows.items():
            ratio = f"{s['median'] / ref:.2f}x" if ref else "-"
            lines.append(f"| {name} | {s['median']:.1f} | {s['min']:.1f} - {s['max']:.1f} | {ratio} |")
    for note in result.get("notes", []):
        lines.append(f"\nnote: {note}")
    return "\n".join(lines)
