"""Reading evaluation data: documents for perplexity, LAMBADA pairs, multiple-choice items.

Every problem with a file is an :class:`~rwkvkit.errors.EvalDataError` naming the file, the line
and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import EvalDataError
from ..fileio import check_regular_file, iter_jsonl, os_problem, read_text


@dataclasses.dataclass(frozen=True)
class Choice:
    """A multiple-choice item: the continuations are scored after ``context``."""

    context: str
    choices: tuple[str, ...]
    label: int


def _read_jsonl(path: Path, limit: int | None) -> list[tuple[int, dict[str, Any]]]:
    check_regular_file(path, EvalDataError)
    rows = []
    for lineno, obj in iter_jsonl(path, EvalDataError):
        rows.append((lineno, obj))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise EvalDataError(f"{path}: the file holds no examples")
    return rows


def _field(path: Path, lineno: int, obj: dict[str, Any], key: str, kind: type) -> Any:
    if key not in obj:
        raise EvalDataError(f"{path}:{lineno}: missing the field {key!r} (fields: {sorted(obj)})")
    value = obj[key]
    if kind is int and isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 20:
        value = int(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise EvalDataError(f"{path}:{lineno}: {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _is_jsonl(path: Path) -> bool:
    if path.suffix.lower() in (".jsonl", ".json"):
        return True
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = json.loads(f.readline(1 << 20).strip())
    except OSError as e:
        raise EvalDataError(f"{path}: {os_problem(e)}") from None
    except (json.JSONDecodeError, RecursionError):
        return False
    return isinstance(first, dict) and "text" in first


def read_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """Documents for perplexity: a JSONL file of ``{"text": ...}`` or a plain UTF-8 text file (one document)."""
    path = check_regular_file(path, EvalDataError)
    if _is_jsonl(path):
        return [_field(path, n, obj, "text", str) for n, obj in _read_jsonl(path, limit)]
    return [read_text(path, EvalDataError)]


def read_lambada(path: str | Path, limit: int | None = None) -> list[tuple[str, str]]:
    """LAMBADA JSONL -> (context, target) pairs: the target is " " + the text's last word."""
    path = Path(path)
    pairs = []
    for lineno, obj in _read_jsonl(path, limit):
        text = _field(path, lineno, obj, "text", str)
        if " " not in text.strip():
            raise EvalDataError(f"{path}:{lineno}: the text has no space, so no last word to predict")
        context, word = text.rsplit(" ", 1)
        pairs.append((context, " " + word))
    return pairs


def read_multiple_choice(path: str | Path, limit: int | None = None) -> list[Choice]:
    """PIQA JSONL (goal, sol1, sol2, label) or generic JSONL (context, choices, label)."""
    path = Path(path)
    items = []
    for lineno, obj in _read_jsonl(path, limit):
        if "goal" in obj:
            goal = _field(path, lineno, obj, "goal", str)
            choices = (_field(path, lineno, obj, "sol1", str), _field(path, lineno, obj, "sol2", str))
            context = f"Question: {goal}\nAnswer:"  # the harness's PIQA prompt
        elif "context" in obj:
            context = _field(path, lineno, obj, "context", str)
            raw = _field(path, lineno, obj, "choices", list)
            if len(raw) < 2 or not all(isinstance(c, str) and c for c in raw):
                raise EvalDataError(
                    f"{path}:{lineno}: 'choices' must be a list of at least two non-empty strings"
                )
            choices = tuple(raw)
        else:
            raise EvalDataError(
                f"{path}:{lineno}: neither PIQA (goal, sol1, sol2, label) nor generic (context, choices, "
                f"label) fields; got {sorted(obj)}"
            )
        label = _field(path, lineno, obj, "label", int)
        if not 0 <= label < len(choices):
            raise EvalDataError(f"{path}:{lineno}: label {label} is not an index into {len(choices)} choices")
        items.append(Choice(context, choices, label))
    return items
