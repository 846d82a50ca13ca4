"""RecurrentState.stack: the pieces-under-the-grain copy (rwkvkit/state.py: _stack) gives exactly
torch.stack, at every thread count, and leaves autograd to torch.stack."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.state import _GRAIN, _stack


@pytest.mark.parametrize("shape", [(3, 12, 64, 64), (2, 7), (1, _GRAIN + 5)])
@pytest.mark.parametrize("threads", [1, 2])
def test_stack_is_torch_stack(shape: tuple[int, ...], threads: int) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        parts = [torch.randn(shape) for _ in range(5)]
        parts[2] = parts[2].transpose(0, -1).contiguous().transpose(0, -1)  # a non-contiguous part
        got = _stack(parts)
        assert got.shape == (5, *shape) and torch.equal(got, torch.stack(parts))
    finally:
        torch.set_num_threads(before)


def test_stack_keeps_gradients() -> None:
    parts = [torch.randn(4, _GRAIN, requires_grad=True) for _ in range(3)]
    _stack(parts).sum().backward()
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in parts)
