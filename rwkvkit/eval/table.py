"""The results side by side: one column per model, one row per metric."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from .tasks import EvalResult

METRIC_LABELS = {
    "ppl": "perplexity",
    "bits_per_byte": "bits per byte",
    "nll_per_token": "nats per token",
    "tokens": "tokens",
    "bytes": "bytes",
    "acc": "accuracy",
    "acc_norm": "accuracy (per char)",
    "acc_bytes": "accuracy (per byte)",
}


def _fmt(name: str, value: float) -> str:
    if name in ("tokens", "bytes"):
        return f"{int(value):,}"
    if name.startswith("acc"):
        return f"{100 * value:.2f}%"
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"


def format_table(results: Sequence[EvalResult]) -> str:
    """The models side by side: one column per model, one row per metric."""
    if not results:
        return ""
    names = list(dict.fromkeys(k for r in results for k in r.metrics))
    header = ["", *[r.model for r in results]]
    body = [
        ["mode", *[r.mode for r in results]],
        ["tokenizer", *[r.tokenizer for r in results]],
        ["examples" if results[0].task != "perplexity" else "documents", *[str(r.count) for r in results]],
        *[
            [METRIC_LABELS.get(n, n), *[_fmt(n, r.metrics[n]) if n in r.metrics else "-" for r in results]]
            for n in names
        ],
        ["seconds", *[f"{r.seconds:.1f}" for r in results]],
    ]
    widths = [max(len(row[c]) for row in [header, *body]) for c in range(len(header))]
    line = lambda row: "  ".join(  # noqa: E731
        cell.ljust(w) if c == 0 else cell.rjust(w)
        for c, (cell, w) in enumerate(zip(row, widths, strict=True))
    )
    title = f"{results[0].task} on {results[0].data}"
    return "\n".join([title, line(header), "  ".join("-" * w for w in widths), *map(line, body)])


def column_names(paths: Iterable[str]) -> Iterable[str]:
    """Column names for models: the path's last part, made unique."""
    seen: dict[str, int] = {}
    for p in paths:
        name = Path(p).name or p
        seen[name] = seen.get(name, 0) + 1
        yield name if seen[name] == 1 else f"{name} ({seen[name]})"
