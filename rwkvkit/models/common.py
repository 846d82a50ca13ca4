"""Small pieces every RWKV version's model file shares: token shift, input and state checks."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import StateError
from ..state import RecurrentState
from .rwkv4 import as_token_batch, token_shift

__all__ = ["as_token_batch", "check_state_shapes", "token_shift"]


def check_state_shapes(state: RecurrentState, expected: RecurrentState) -> None:
    """Refuse a state from another model, version or batch with a message, not a shape error deep inside.

    ``expected`` is a state of the right kind and shapes (e.g. the model's zero state).
    """
    cls = type(expected)
    if not isinstance(state, cls):
        raise StateError(
            f"expected an {cls.__name__} for this RWKV-{cls.version} model, got {type(state).__name__}"
        )
    for (name, t), want in zip(state.tensors().items(), expected.tensors().values(), strict=True):
        if t.shape != want.shape:
            raise StateError(
                f"state field {name} has shape {tuple(t.shape)}, but this model needs {tuple(want.shape)} "
                "(n_layer, batch, ...): was it made by another model or for another batch size?"
            )


def zeros(shape: tuple[int, ...], device: torch.device | str) -> Tensor:
    return torch.zeros(shape, dtype=torch.float32, device=device)
