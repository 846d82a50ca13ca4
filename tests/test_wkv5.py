"""RWKV-5/6 WKV (rwkvkit/ops/wkv5.py): the chunked form (per-channel decay, bonus) and the step
against the sequential reference loop, both of the chunked form's score paths, and the dispatch point."""

from __future__ import annotations

import time

import pytest
import torch

from rwkvkit.ops import wkv5 as wkv5_module
from rwkvkit.ops.wkv5 import wkv5, wkv5_chunked, wkv5_reference
from rwkvkit.testing import recording_score_paths

pytestmark = pytest.mark.usefixtures("single_thread")

# Outputs are O(10) sums of O(1) terms; float32 rounding in another summation order differs by
# ~1e-6 relative, so 2e-5 absolute-and-relative leaves room without hiding a wrong term.
TOL = 2e-5


def _inputs(B: int, T: int, H: int, N: int, seed: int, decay_log_scale: float = 2.0, dtype=torch.float32):
    """log w = -exp(x), x ~ N(-1, decay_log_scale): from almost no decay to e^-100 and beyond."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, H, N)
    r, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    log_w = -torch.exp(torch.randn(shape, generator=g) * decay_log_scale - 1)
    u = torch.randn(H, N, generator=g)
    state = torch.randn(B, H, N, N, generator=g)
    return tuple(t.to(dtype) for t in (r, log_w, k, v, u, state))


@pytest.mark.parametrize(
    ("B", "T", "H", "N", "chunk", "scale"),
    [(1, 2, 1, 4, 8, 2.0), (2, 7, 3, 5, 3, 2.0), (3, 64, 2, 16, 16, 0.3), (2, 100, 2, 8, 32, 2.0),
     (1, 33, 1, 3, 1, 2.0), (1, 70, 2, 64, 64, 0.5), (2, 50, 2, 8, 16, 4.0)],
)  # fmt: skip
def test_chunked_equals_reference(B: int, T: int, H: int, N: int, chunk: int, scale: float) -> None:
    x = _inputs(B, T, H, N, seed=T, decay_log_scale=scale)
    ref, ref_state = wkv5_reference(*x)
    out, out_state = wkv5_chunked(*x, chunk_len=chunk)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)
    torch.testing.assert_close(out_state, ref_state, atol=TOL, rtol=TOL)


def test_both_score_paths_are_used_and_agree() -> None:
    """Slow decays take the factorised path, fast ones the pairwise one (recorded); both equal the loop."""
    for scale, log_w_shift, path in ((0.1, -3.0, "factorised"), (0.1, 4.0, "pairwise")):  # ~0.05, ~55 nats
        r, log_w, k, v, u, s = _inputs(1, 64, 2, 8, seed=1, decay_log_scale=scale)
        log_w = log_w * torch.exp(torch.tensor(log_w_shift + 1))
        ref, ref_state = wkv5_reference(r, log_w, k, v, u, s)
        with recording_score_paths(wkv5_module) as seen:
            out, out_state = wkv5_chunked(r, log_w, k, v, u, s, chunk_len=32)
        assert seen == [path, path], seen  # two chunks of 32, each on the expected path
        torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)
        torch.testing.assert_close(out_state, ref_state, atol=TOL, rtol=TOL)


def test_infinite_decay_and_state_untouched() -> None:
    """w = 0 (log w = -inf, what exp(-exp(huge)) gives) forgets exactly; the given state is not changed."""
    r, log_w, k, v, u, s = _inputs(2, 40, 2, 4, seed=2)
    log_w[:, 5:9] = float("-inf")
    before = s.clone()
    ref, ref_state = wkv5_reference(r, log_w, k, v, u, s)
    out, out_state = wkv5_chunked(r, log_w, k, v, u, s, chunk_len=16)
    assert torch.isfinite(out).all() and torch.isfinite(out_state).all()
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)
    torch.testing.assert_close(out_state, ref_state, atol=TOL, rtol=TOL)
    assert torch.equal(s, before)
    one, _ = wkv5(r[:, :1], log_w[:, :1], k[:, :1], v[:, :1], u, s)
    torch.testing.assert_close(one, ref[:, :1], atol=0, rtol=0)
    flat, _ = wkv5(r[:, 0], log_w[:, 0], k[:, 0], v[:, 0], u, s)  # (B, H, N): the model's decode step
    torch.testing.assert_close(flat, ref[:, 0], atol=0, rtol=0)


def test_gradients_equal_reference() -> None:
    x = _inputs(2, 37, 2, 8, seed=5, decay_log_scale=1.0, dtype=torch.float64)
    grads = []
    for fn in (wkv5_reference, lambda *a: wkv5_chunked(*a, chunk_len=8)):
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
    for name, a, b in zip(("r", "log_w", "k", "v", "u", "state"), g2, g1, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=f"gradient of {name}")


def _long_input_in_pieces(T: int, piece: int) -> None:
    x = _inputs(1, T, 2, 8, seed=7, decay_log_scale=1.5)
    ref, ref_state = wkv5_reference(*x)
    state, outs = x[-1], []
    for start in range(0, T, piece):
        sl = slice(start, start + piece)
        out, state = wkv5_chunked(*(t[:, sl] for t in x[:4]), x[4], state, chunk_len=32)
        outs.append(out)
    out = torch.cat(outs, dim=1)
    assert torch.isfinite(out).all() and torch.isfinite(state).all()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state, ref_state, atol=1e-4, rtol=1e-4)


def test_long_input_in_pieces_equals_reference() -> None:
    _long_input_in_pieces(3000, 1000)


@pytest.mark.slow
def test_50k_tokens_in_pieces_equal_reference() -> None:
    start = time.perf_counter()
    _long_input_in_pieces(50_000, 4096)
    print(f"50k tokens: {time.perf_counter() - start:.1f} s")
