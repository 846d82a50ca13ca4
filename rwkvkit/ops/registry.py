"""Where each WKV op finds its implementation: one small backend registry per op.

Every op module (``wkv4``, ``wkv5``, ``wkv7``) owns one :class:`BackendRegistry` whose default is its
portable PyTorch pair (the one-token step and the chunked sequence form), and exposes one dispatch
function that looks the backend up by the inputs' device type and dtype. A CUDA or Triton kernel
plugs in by registering there, e.g. ``wkv7.BACKENDS.register(Backend("triton", step, chunked),
"cuda")``; nothing else in the package changes. A backend that only speeds up one form reuses the
default's other one (``dataclasses.replace(BACKENDS.default, sequence=kernel)``).

A kernel that needs an optional package (Triton, fla-core) is offered through a *loader*: the
``"module:function"`` path (relative to this package) of a function run once, at the first lookup
for its device type, that returns the backend, or None where the device cannot run it. A module
that cannot be imported (the package is missing) loads nothing; one that fails otherwise (a
version clash) loads nothing with a warning that says why. So the CUDA kernels register
themselves on the first CUDA call, and a CPU-only process never imports Triton. A backend registered by hand before that first call is kept. ``RWKVKIT_KERNELS=torch`` in
the environment skips every loader: each op then runs its PyTorch forms everywhere.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import warnings
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

    def __init__(self, op: str, default: Backend, loaders: dict[str, str] | None = None) -> None:
        self.op = op
        self.default = default
        self._table: dict[tuple[str, torch.dtype | None], Backend] = {}
        self._loaders = dict(loaders or {})  # device type -> "module:function", dropped once it has run

    def register(self, backend: Backend, device_type: str, dtype: torch.dtype | None = None) -> None:
        """Use ``backend`` for inputs on ``device_type`` ("cuda", "cpu", ...), of ``dtype`` if given."""
        self._table[(device_type, dtype)] = backend

    def unregister(self, device_type: str, dtype: torch.dtype | None = None) -> None:
        self._table.pop((device_type, dtype), None)

    def lookup(self, x: torch.Tensor) -> Backend:
        """The backend for inputs like ``x``: exact dtype first, then any dtype, then the default."""
        table = self._table
        if not table and not self._loaders:
            return self.default
        device_type = x.device.type
        if device_type in self._loaders:
            self._load(device_type)
        return table.get((device_type, x.dtype)) or table.get((device_type, None)) or self.default

    def _load(self, device_type: str) -> None:
        """Run the loader for ``device_type`` once; keep what it gives unless one was registered."""
        loader = self._loaders.pop(device_type)
        if os.environ.get("RWKVKIT_KERNELS", "").lower() == "torch":
            return
        module, function = loader.split(":")
        try:
            backend = getattr(importlib.import_module(module, __package__), function)()
        except ImportError:
            return
        except Exception as e:  # a broken install must not stop the model: the PyTorch forms still run
            warnings.warn(
                f"{self.op}: the {device_type} kernels failed to load ({e!r}); using PyTorch", stacklevel=3
            )
            return
        if backend is not None and (device_type, None) not in self._table:
            self.register(backend, device_type)
