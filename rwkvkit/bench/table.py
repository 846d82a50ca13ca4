"""The bench tables: median tokens/s, min - max over rounds, and ratios to a reference row."""

from __future__ import annotations

from typing import Any

from ..errors import RwkvkitError
from .machine import machine_line


def check_reference(reference: str | None, names: list[str]) -> None:
    """A ``--reference`` must name a row: a contender's name (its B=1 decode row), or a row itself."""
    if reference is None:
        return
    rows = {n for name in names for n in (name, f"{name}, B=1", f"{name}, B=8")}
    if reference not in rows:
        listed = ", ".join(repr(n) for n in names) or "none"
        raise RwkvkitError(f"--reference {reference!r} names no row of this run; the rows are: {listed}")


def format_table(result: dict[str, Any], reference: str | None = None) -> str:
    """Markdown tables: median tokens/s (min-max over rounds), and each row's ratio to ``reference``."""
    names = [*result["decode_tok_s"], *result.get("prefill_tok_s", {})]
    if reference is not None and not any(k in (reference, f"{reference}, B=1") for k in names):
        raise RwkvkitError(
            f"--reference {reference!r} names no row; the rows are: {', '.join(map(repr, names))}"
        )
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
