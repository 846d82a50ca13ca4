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


# PyTorch's CPU copies split anything above this many elements across OpenMP threads (its
# at::internal::GRAIN_SIZE).
_GRAIN = 32768


def _stack(parts: list[Tensor]) -> Tensor:
    """``torch.stack(parts)``, copied in pieces smaller than PyTorch's grain size on the CPU when no
    gradient is wanted. A large stack (RWKV-7 0.1B: 2.4 MB of WKV state every decoded token) is
    otherwise one OpenMP region, and beside a busy core its barrier waits for a descheduled thread:
    22 ms a call instead of ~0.2 ms at 2 threads, the largest cost of a 2-thread decode step there.
    Pieces this small are copied on the calling thread."""
    first = parts[0]
    if (
        first.device.type != "cpu"
        or first.numel() * len(parts) <= _GRAIN
        or torch.get_num_threads() == 1
        or (torch.is_grad_enabled() and any(p.requires_grad for p in parts))
    ):
        return torch.stack(parts)
    out = first.new_empty((len(parts), *first.shape))
    flat = out.view(len(parts), -1)
    for i, part in enumerate(parts):
        src = part.reshape(-1)
        for lo in range(0, src.numel(), _GRAIN):
            flat[i, lo : lo + _GRAIN].copy_(src[lo : lo + _GRAIN])
    return out


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
        return cls(**{n: _stack([getattr(part, n) for part in layers]) for n in names})

    @classmethod
    def cat(cls: type[S], states: list[S]) -> S:
        """Join states along the batch dimension."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: torch.cat([getattr(s, n) for s in states], dim=1) for n in names})
