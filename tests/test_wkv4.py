"""The chunked parallel WKV against the sequential reference loop."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.ops.wkv4 import initial_wkv_state, wkv4, wkv4_chunked, wkv4_reference
from rwkvkit.ops.wkv4_train import wkv4_chunked_matmul

# The two parallel forms: row-max (exact for any values) and matmul (the model's, with fallback).
PARALLEL_FORMS = [wkv4_chunked, wkv4_chunked_matmul]

# fp32 rounding of exponents near 1e2 reaches ~1e-5 relative; outputs are averages of O(1) values.
TOL = 2e-5


def _inputs(B: int, T: int, C: int, seed: int, k_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    w = -torch.exp(torch.rand(C, generator=g) * 8 - 5)
    u = torch.randn(C, generator=g)
    k = torch.randn(B, T, C, generator=g) * k_scale
    v = torch.randn(B, T, C, generator=g)
    return w, u, k, v


@pytest.mark.parametrize(
    ("B", "T", "C", "chunk"), [(1, 1, 4, 8), (2, 7, 5, 3), (3, 64, 16, 16), (2, 100, 9, 32), (1, 33, 3, 1)]
)
def test_chunked_equals_reference(B: int, T: int, C: int, chunk: int) -> None:
    w, u, k, v = _inputs(B, T, C, seed=T)
    state = initial_wkv_state(B, C)
    ref, ref_state = wkv4_reference(w, u, k, v, state)
    out, out_state = wkv4_chunked(w, u, k, v, state, chunk_len=chunk)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)
    for a, b in zip(out_state, ref_state, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


def test_dispatch_single_token_uses_step() -> None:
    w, u, k, v = _inputs(2, 1, 6, seed=0)
    state = initial_wkv_state(2, 6)
    out, _ = wkv4(w, u, k, v, state)
    ref, _ = wkv4_reference(w, u, k, v, state)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


@pytest.mark.parametrize("form", PARALLEL_FORMS)
@pytest.mark.parametrize("k_scale", [60.0, 5.0])  # 60: the matmul form falls back; 5: it runs itself
def test_extreme_values_stay_finite(form, k_scale: float) -> None:
    """Decays from none to total, huge bonuses and keys: no overflow, no NaN, same numbers."""
    C = 10
    w = -torch.exp(torch.tensor([-60.0, -20, -5, 0, 2, 5, 20, 60, 100, 1000]))  # last ones are -inf
    u = torch.tensor([-1e3, -50, -5, 0, 1, 5, 50, 1e3, 0, 10])
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 300, C, generator=g) * k_scale
    v = torch.randn(2, 300, C, generator=g)
    state = initial_wkv_state(2, C)
    ref, ref_state = wkv4_reference(w, u, k, v, state)
    out, out_state = form(w, u, k, v, state, chunk_len=32)
    assert torch.isfinite(out).all() and torch.isfinite(ref).all()
    # Exponents reach ~1e3 here, where one float32 ulp is ~6e-5: outputs agree to that.
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)
    for a, b in zip(out_state, ref_state, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("form", PARALLEL_FORMS)
def test_100k_tokens_in_chunks_match_reference(form) -> None:
    """A 100,000-token input fed in pieces with the state carried equals the sequential loop.

    The truth is the reference loop in float64: over 1e5 steps the float32 loop itself drifts by
    ~7e-4 on a slowly decaying channel, while the chunked form, which sums each chunk at once,
    stays within ~3e-5 of the float64 result.
    """
    C, T = 6, 100_000
    w = -torch.exp(torch.tensor([-40.0, -8, -1, 0.5, 3, 40]))
    u = torch.tensor([30.0, -30, 0, 2, -2, 0.5])
    g = torch.Generator().manual_seed(1)
    k = torch.randn(1, T, C, generator=g) * 10
    v = torch.randn(1, T, C, generator=g)
    state64 = tuple(t.double() for t in initial_wkv_state(1, C))
    ref, ref_state = wkv4_reference(w.double(), u.double(), k.double(), v.double(), state64)
    state, outs = initial_wkv_state(1, C), []
    for start in range(0, T, 8192):  # pieces that do not align with the chunk length
        out, state = wkv4_chunked(
            w, u, k[:, start : start + 8192], v[:, start : start + 8192], state, chunk_len=48
        )
        outs.append(out)
    out = torch.cat(outs, dim=1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    for a, b in zip(state, ref_state, strict=True):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)
