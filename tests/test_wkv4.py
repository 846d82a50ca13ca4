"""RWKV-4 WKV (rwkvkit/ops/wkv4.py): both chunked parallel forms (row-max and matmul) and the step
against the sequential reference loop, forward, final state and every gradient, including through the
initial state and across chunk and call boundaries; and the one dispatch point's choice of backend."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.ops import wkv4 as wkv4_module
from rwkvkit.ops.registry import Backend
from rwkvkit.ops.wkv4 import (
    SAFE_K_SPREAD,
    initial_wkv_state,
    wkv4,
    wkv4_chunked,
    wkv4_chunked_matmul,
    wkv4_reference,
    wkv4_step,
)

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
    flat, _ = wkv4(w, u, k[:, 0], v[:, 0], state)  # (B, C): the model's decode step
    assert flat.shape == (2, 6)
    torch.testing.assert_close(flat, ref[:, 0], atol=0, rtol=0)


def test_dispatch_uses_the_registered_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend registered for the inputs' device serves both forms; unregistered, the default."""
    calls = []
    default = wkv4_module.BACKENDS.default

    def spy(form):
        def run(*args):
            calls.append(form)
            return getattr(default, form)(*args)

        return run

    monkeypatch.setattr(wkv4_module.BACKENDS, "_table", {})
    wkv4_module.BACKENDS.register(Backend("spy", spy("step"), spy("sequence")), "cpu", torch.float32)
    w, u, k, v = _inputs(2, 9, 6, seed=0)
    state = initial_wkv_state(2, 6)
    wkv4(w, u, k, v, state, chunk_len=4)
    wkv4(w, u, k[:, :1], v[:, :1], state)
    wkv4(w, u, k[:, 0], v[:, 0], state)
    wkv4(*(t.double() for t in (w, u, k, v)), tuple(s.double() for s in state))  # no float64 backend
    assert calls == ["sequence", "step", "step"]
    wkv4_module.BACKENDS.unregister("cpu", torch.float32)
    wkv4(w, u, k, v, state)
    assert len(calls) == 3


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


# The matmul form's gradients (what training and prefill run).


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


def _steps(w, u, k, v, state):
    """The step form written out over T tokens (what the model's decode step runs, with autograd)."""
    outs = []
    for t in range(k.shape[1]):
        out, state = wkv4_step(w, u, k[:, t], v[:, t], state)
        outs.append(out)
    return torch.stack(outs, dim=1), state


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
    for fn, kw in ((wkv4_reference, {}), (wkv4_chunked_matmul, {"chunk_len": chunk}), (_steps, {})):
        xs = [t.clone().requires_grad_() for t in base]
        out, (n, d, m) = fn(-torch.exp(xs[0]), xs[1], xs[2], xs[3], tuple(xs[4:]), **kw)
        g = torch.Generator().manual_seed(1)
        # a loss on the output and on the final state as the sums it stands for (S = num e^max)
        S, Z = n * torch.exp(m), d * torch.exp(m)
        loss = (out * torch.randn(out.shape, generator=g)).sum() + 1e-3 * (S.sum() + Z.sum())
        loss.backward()
        results.append((out, S, Z, [x.grad for x in xs]))
    (o1, S1, Z1, g1) = results[0]
    for o2, S2, Z2, g2 in results[1:]:  # the matmul form, then the step form
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
