"""RWKV-7 WKV (rwkvkit/ops/wkv7.py): the chunked form (delta rule, UT transform) and the step against
the sequential reference loop, both of the chunked form's score paths, and the dispatch point."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from rwkvkit.ops import wkv7 as wkv7_module
from rwkvkit.ops.wkv7 import wkv7, wkv7_chunked, wkv7_reference
from rwkvkit.testing import recording_score_paths

pytestmark = pytest.mark.usefixtures("single_thread")

# Outputs are O(10) sums of O(1) terms; float32 rounding in two different orders of summation
# differs by ~1e-6 relative, so 2e-5 absolute-and-relative leaves room without hiding a wrong term.
TOL = 2e-5


def _inputs(B: int, T: int, H: int, N: int, seed: int, decay_scale: float = 1.0, dtype=torch.float32):
    """Inputs as an RWKV-7 layer makes them: w in (e^-0.61, 1), kk unit vectors, a in (0, 1).
    ``decay_scale`` < 1 makes every decay slower (log w scaled towards 0)."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, H, N)
    r, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    log_w = -0.6065 * decay_scale * torch.sigmoid(torch.randn(shape, generator=g) * 3)
    kk = F.normalize(torch.randn(shape, generator=g), dim=-1)
    a = torch.sigmoid(torch.randn(shape, generator=g) * 2)
    state = torch.randn(B, H, N, N, generator=g)
    return tuple(t.to(dtype) for t in (r, log_w, k, v, -kk, kk * a, state))


@pytest.mark.parametrize(
    ("B", "T", "H", "N", "chunk"),
    [
        (1, 2, 1, 4, 8),
        (2, 7, 3, 5, 3),
        (3, 64, 2, 16, 16),
        (2, 100, 2, 8, 32),
        (1, 33, 1, 3, 1),
        (1, 40, 2, 64, 64),
    ],
)
def test_chunked_equals_reference(B: int, T: int, H: int, N: int, chunk: int) -> None:
    x = _inputs(B, T, H, N, seed=T)
    ref, ref_state = wkv7_reference(*x)
    out, out_state = wkv7_chunked(*x, chunk_len=chunk)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)
    torch.testing.assert_close(out_state, ref_state, atol=TOL, rtol=TOL)


@pytest.mark.parametrize(
    ("chunk", "decay_scale", "paths"),
    [
        (32, 1.0, {"factorised"}),  # <= 65 tokens: factorised by length alone, whatever the decay
        (160, 0.1, {"factorised"}),  # long chunks of slow decays: the span (~5 nats) stays small
        # long chunks of the fastest RWKV-7 decays: full chunks span ~53 nats > 40, so pairwise;
        # the last chunk (80 tokens, ~27 nats) is long enough to be judged by its span, and passes
        (160, 1.0, {"factorised", "pairwise"}),
    ],
)
def test_both_score_paths_are_used_and_agree(chunk: int, decay_scale: float, paths: set[str]) -> None:
    """Which path each chunk took is recorded, and either way the result equals the loop."""
    x = _inputs(1, 400, 2, 8, seed=11, decay_scale=decay_scale)
    ref, ref_state = wkv7_reference(*x)
    with recording_score_paths(wkv7_module) as seen:
        out, out_state = wkv7_chunked(*x, chunk_len=chunk)
    assert set(seen) == paths
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)
    torch.testing.assert_close(out_state, ref_state, atol=TOL, rtol=TOL)


def test_state_is_not_mutated_and_single_token_uses_step() -> None:
    x = _inputs(2, 1, 2, 4, seed=0)
    before = x[-1].clone()
    out, _ = wkv7(*x)
    ref, _ = wkv7_reference(*x)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    flat, _ = wkv7(*(t[:, 0] for t in x[:-1]), x[-1])  # (B, H, N): the model's decode step
    torch.testing.assert_close(flat, ref[:, 0], atol=0, rtol=0)
    wkv7(*_inputs(2, 9, 2, 4, seed=0)[:-1], x[-1])
    assert torch.equal(x[-1], before)


def test_gradients_equal_reference() -> None:
    """Forward, final state and the gradient of every input (and the initial state) agree."""
    x = _inputs(2, 37, 2, 8, seed=5, dtype=torch.float64)
    grads = []
    for fn in (wkv7_reference, lambda *a: wkv7_chunked(*a, chunk_len=8)):
        leaves = [t.clone().requires_grad_(True) for t in x]
        out, state = fn(*leaves)
        g = torch.Generator().manual_seed(1)
        loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() + (
            state * torch.randn(state.shape, generator=g, dtype=state.dtype)
        ).sum()
        loss.backward()
        grads.append((out.detach(), state.detach(), [t.grad for t in leaves]))
    (o1, s1, g1), (o2, s2, g2) = grads
    torch.testing.assert_close(o2, o1, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(s2, s1, atol=1e-10, rtol=1e-10)
    for name, a, b in zip(("r", "log_w", "k", "v", "alpha", "beta", "state"), g2, g1, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=f"gradient of {name}")


def _long_input_in_pieces(T: int, piece: int) -> None:
    x = _inputs(1, T, 2, 8, seed=7)
    ref, ref_state = wkv7_reference(*x)
    state, outs = x[-1], []
    for start in range(0, T, piece):
        sl = slice(start, start + piece)
        out, state = wkv7_chunked(*(t[:, sl] for t in x[:-1]), state, chunk_len=32)
        outs.append(out)
    out = torch.cat(outs, dim=1)
    assert torch.isfinite(out).all() and torch.isfinite(state).all()
    # The state is a contraction of bounded writes, so errors do not grow with length.
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state, ref_state, atol=1e-4, rtol=1e-4)


def test_long_input_in_pieces_equals_reference() -> None:
    _long_input_in_pieces(3000, 1000)


@pytest.mark.slow
def test_50k_tokens_in_pieces_equal_reference() -> None:
    start = time.perf_counter()
    _long_input_in_pieces(50_000, 4096)
    print(f"50k tokens: {time.perf_counter() - start:.1f} s")


def test_no_decay_and_full_removal_stay_finite() -> None:
    """Edge of the domain: w = 1 (log 0) and a = 1 (remove everything along kk) over many steps."""
    x = list(_inputs(1, 500, 1, 8, seed=3))
    x[1] = torch.zeros_like(x[1])
    x[5] = -x[4]  # beta = kk, i.e. a = 1
    ref, ref_state = wkv7_reference(*x)
    out, out_state = wkv7_chunked(*x, chunk_len=32)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_state, ref_state, atol=1e-4, rtol=1e-4)
