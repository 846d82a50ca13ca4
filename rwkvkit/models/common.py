"""Small pieces every RWKV version's model file shares: token shift, input and state checks."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import StateError
from ..state import RecurrentState

__all__ = ["as_token_batch", "check_state_shapes", "token_shift"]


def token_shift(x: Tensor, x_prev: Tensor) -> Tensor:
    """The previous token's input at every position: x_prev, x_0, ..., x_{T-2}. (B, T, C)"""
    return torch.cat([x_prev[:, None], x[:, :-1]], dim=1)


def as_token_batch(tokens: Tensor | list[int], device: torch.device) -> Tensor:
    """Accept (B, T) ids, a 1-D tensor or a list; return a (B, T) long tensor on the model's device."""
    t = torch.as_tensor(tokens, dtype=torch.long, device=device)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[1] == 0:
        raise ValueError(f"tokens must be (B, T) with T >= 1, got shape {tuple(t.shape)}")
    return t


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
