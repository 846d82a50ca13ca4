"""Numbers read from a checkpoint's config (config.json, safetensors metadata), type- and
range-checked where they are read, so the error names the file and the key."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CheckpointError


def config_number(
    cfg: Mapping[str, Any],
    key: str,
    where: str | Path,
    *,
    kind: type = float,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    """``cfg[key]`` as a ``kind`` (int or float) with ``low < value`` (ints: ``low <= value``) and
    ``value < high``; NaN, infinity, booleans, strings and null are refused."""
    value = given = cfg[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and kind is int:
        ok = isinstance(value, int) or (math.isfinite(value) and float(value).is_integer())
        value = int(value) if ok else value
    elif ok:
        value = float(value)
        ok = math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if kind is int else value > low
    if ok and high is not None:
        ok = value < high
    if not ok:
        if kind is float and low is not None and high is not None:
            rule = f"a number between {low:g} and {high:g}"
        else:
            rule = "an integer" if kind is int else "a finite number"
            if low is not None:
                rule += f" {'>=' if kind is int else '>'} {low:g}"
            if high is not None:
                rule += f" {'and ' if low is not None else ''}< {high:g}"
        raise CheckpointError(where, f"{key!r} is {given!r}, not {rule}")
    return value
