"""The recurrent state: what an RWKV model carries from one token to the next.

Each RWKV version defines its own state dataclass (in its model file) on top of
:class:`RecurrentState`, whose fields are all tensors with the batch on dimension 1
(dimension 0 is the layer). The base class gives every version the same handling:
cloning, moving, batch selection, a flat dict of tensors for state files, and the per-layer view
the model's blocks work on (:meth:`RecurrentState.layer` and :meth:`RecurrentState.stack`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from .errors import StateError

S = TypeVar("S", bound="RecurrentState")


@dataclasses.dataclass
class RecurrentState:
    """Base of every version's state; subclasses add tensor fields shaped (n_layer, B, ...)."""

    version: ClassVar[str] = ""

    def tensors(self) -> dict[str, Tensor]:
        """Field name -> tensor, in declaration order (what a state file stores)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_tensors(cls: type[S], tensors: dict[str, Tensor]) -> S:
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise StateError(f"state for RWKV-{cls.version} is missing the tensors {missing}")
        return cls(**{n: tensors[n] for n in names})

    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors().values())).shape[1]

    def _map(self: S, fn: Any) -> S:
        return type(self)(**{name: fn(t) for name, t in self.tensors().items()})

    def clone(self: S) -> S:
        """An independent copy: generating from it never changes the original."""
        return self._map(lambda t: t.clone())

    def detach(self: S) -> S:
        """The same values cut from the autograd graph (truncated backpropagation through time)."""
        return self._map(lambda t: t.detach())

    def to(self: S, device: torch.device | str) -> S:
        return self._map(lambda t: t.to(device))

    def expand(self: S, batch: int) -> S:
        """A batch-1 state repeated for ``batch`` rows, as new tensors (gradients reach the original:
        a learned initial state is trained through this)."""
        if self.batch_size != 1:
            raise StateError(f"only a state of one row can be expanded, this one has {self.batch_size}")
        return self._map(lambda t: t.expand(t.shape[0], batch, *t.shape[2:]).clone())

    def select(self: S, index: Tensor | list[int]) -> S:
        """The states of some batch rows, e.g. to fan one prompt's state out to many samples."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return self._map(lambda t: t.index_select(1, idx.to(t.device)))

    def layer(self: S, i: int) -> S:
        """Layer i's part: the same fields without the layer dimension, (B, ...) each.

        A block reads it and returns an updated copy (``dataclasses.replace``); :meth:`stack` joins
        the layers' parts back into a whole state. ``batch_size``, ``select`` and ``cat`` are for
        whole states only.
        """
        return self._map(lambda t: t[i])

    @classmethod
    def stack(cls: type[S], layers: Sequence[S]) -> S:
        """The whole state from every layer's part, in layer order (the inverse of :meth:`layer`)."""
        names = layers[0].tensors()  # fields of an instance: what torch.compile can trace
        return cls(**{n: torch.stack([getattr(part, n) for part in layers]) for n in names})

    @classmethod
    def cat(cls: type[S], states: list[S]) -> S:
        """Join states along the batch dimension."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: torch.cat([getattr(s, n) for s in states], dim=1) for n in names})
