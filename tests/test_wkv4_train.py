"""The training WKV (matmul chunked form) against the sequential definition: forward, final state
and every gradient, including through the initial state and across chunk and call boundaries."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.ops.wkv4 import initial_wkv_state, wkv4_reference
from rwkvkit.ops.wkv4_train import SAFE_K_SPREAD, wkv4_chunked_matmul


def make_inputs(
    B: int, T: int, C: int, dtype: torch.dtype, seed: int = 0, k_scale: float = 2.0, warm: bool = True
):
    g = torch.Generator().manual_seed(seed)
    td = (torch.rand(C, generator=g) * 7 - 5).to(dtype)  # decays from e^-e^-5 (slow) to e^-e^2 (fast)
    u = torch.randn(C, generator=g).to(dtype)
    k = (torch.randn(B, T, C, generator=g) * k_scale).to(dtype)
    v = torch.randn(B, T, C, generator=g).to(dtype)
    if warm:  # a state that has seen something, so its gradients are not trivially zero
        num = torch.randn(B, C, generator=g).to(dtype)
        den = (torch.rand(B, C, generator=g) + 0.5).to(dtype)
        mx = torch.randn(B, C, generator=g).to(dtype)
    else:
        num, den, mx = (t.to(dtype) for t in initial_wkv_state(B, C))
    return td, u, k, v, num, den, mx


def run(fn, td, u, k, v, num, den, mx, **kw):
    out, (n, d, m) = fn(-torch.exp(td), u, k, v, (num, den, mx), **kw)
    return out, n, d, m


def test_gradcheck_float64_tiny() -> None:
    inputs = [t.requires_grad_() for t in make_inputs(2, 7, 3, torch.float64)]

    def f(*xs):
        out, n, d, m = run(wkv4_chunked_matmul, *xs, chunk_len=3)
        return out, n * torch.exp(m), d * torch.exp(m)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("B", "T", "C", "chunk"), [(2, 64, 16, 16), (3, 37, 5, 8), (1, 100, 24, 32), (2, 5, 4, 32)]
)
@pytest.mark.parametrize("warm", [False, True])
def test_forward_state_and_gradients_match_reference(B: int, T: int, C: int, chunk: int, warm: bool) -> None:
    base = make_inputs(B, T, C, torch.float32, seed=T + C, warm=warm)
    results = []
    for fn, kw in ((wkv4_reference, {}), (wkv4_chunked_matmul, {"chunk_len": chunk})):
        xs = [t.clone().requires_grad_() for t in base]
        out, (n, d, m) = fn(-torch.exp(xs[0]), xs[1], xs[2], xs[3], tuple(xs[4:]), **kw)
        g = torch.Generator().manual_seed(1)
        # a loss on the output and on the final state as the sums it stands for (S = num e^max)
        S, Z = n * torch.exp(m), d * torch.exp(m)
        loss = (out * torch.randn(out.shape, generator=g)).sum() + 1e-3 * (S.sum() + Z.sum())
        loss.backward()
        results.append((out, S, Z, [x.grad for x in xs]))
    (o1, S1, Z1, g1), (o2, S2, Z2, g2) = results
    # fp32: outputs are weighted averages of O(1) values; 2e-5 covers reassociated sums over T.
    torch.testing.assert_close(o2, o1, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(S2, S1, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(Z2, Z1, atol=1e-4, rtol=1e-4)
    names = ["time_decay", "time_first", "k", "v", "num", "den", "max"]
    for name, a, b in zip(names, g1, g2, strict=True):
        if not warm and name in ("num", "den", "max"):
            continue  # the empty state's max is -1e38: gradients there are 0 * huge either way
        torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-4, msg=lambda m, n=name: f"d/d{n}: {m}")


def test_gradients_flow_across_calls() -> None:
    """Two calls with the state carried == one call over the whole sequence, gradients included."""
    base = make_inputs(2, 48, 8, torch.float32, seed=3)
    grads = []
    for split in (None, 20):
        xs = [t.clone().requires_grad_() for t in base]
        w, u, k, v = -torch.exp(xs[0]), xs[1], xs[2], xs[3]
        state = tuple(xs[4:])
        if split is None:
            out, _ = wkv4_chunked_matmul(w, u, k, v, state, 16)
        else:
            o1, st = wkv4_chunked_matmul(w, u, k[:, :split], v[:, :split], state, 16)
            o2, _ = wkv4_chunked_matmul(w, u, k[:, split:], v[:, split:], st, 16)
            out = torch.cat([o1, o2], dim=1)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads.append([x.grad for x in xs])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_wide_k_spread_falls_back_and_stays_exact() -> None:
    """k values spanning more than SAFE_K_SPREAD nats in one chunk take the row-max path."""
    td, u, k, v, num, den, mx = make_inputs(1, 24, 4, torch.float32, seed=5)
    k = k.clone()
    k[0, 3, 0] = SAFE_K_SPREAD + 30.0
    k[0, 10, 0] = -40.0
    ref, _ = wkv4_reference(-torch.exp(td), u, k, v, (num, den, mx))
    out, _ = wkv4_chunked_matmul(-torch.exp(td), u, k, v, (num, den, mx), 16)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
