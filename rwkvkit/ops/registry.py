"""Where each WKV op finds its implementation: one small backend registry per op.

Every op module (``wkv4``, ``wkv5``, ``wkv7``) owns one :class:`BackendRegistry` whose default is its
portable PyTorch pair (the one-token step and the chunked sequence form), and exposes one dispatch
function that looks the backend up by the inputs' device type and dtype. A CUDA or Triton kernel
plugs in by registering there, e.g. ``wkv7.BACKENDS.register(Backend("triton", step, chunked),
"cuda")``; nothing else in the package changes. A backend that only speeds up one form reuses the
default's other one (``dataclasses.replace(BACKENDS.default, sequence=kernel)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class Backend:
    """One implementation of an op: its one-token form and its T-token form (signatures per op)."""

    name: str
    step: Callable[..., Any]
    sequence: Callable[..., Any]


class BackendRegistry:
    """Backends of one op keyed by (device type, dtype or None for any dtype), with a default."""

    def __init__(self, op: str, default: Backend) -> None:
        self.op = op
        self.default = default
        self._table: dict[tuple[str, torch.dtype | None], Backend] = {}

    def register(self, backend: Backend, device_type: str, dtype: torch.dtype | None = None) -> None:
        """Use ``backend`` for inputs on ``device_type`` ("cuda", "cpu", ...), of ``dtype`` if given."""
        self._table[(device_type, dtype)] = backend

    def unregister(self, device_type: str, dtype: torch.dtype | None = None) -> None:
        self._table.pop((device_type, dtype), None)

    def lookup(self, x: torch.Tensor) -> Backend:
        """The backend for inputs like ``x``: exact dtype first, then any dtype, then the default."""
        table = self._table
        if not table:
            return self.default
        device_type = x.device.type
        return table.get((device_type, x.dtype)) or table.get((device_type, None)) or self.default
