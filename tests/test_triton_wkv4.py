"""The Triton RWKV-4 kernel (rwkvkit/ops/triton_wkv4.py) against the reference loop and the chunked
matmul form: outputs, final state and every gradient (the initial state's, and the final state's
maximum's own), from empty and warm states, in float32 and bfloat16, with extreme keys and decays,
and the one-token step. On the CPU under Triton's interpreter, on a GPU compiled (``-m cuda``).

The kernel is elementwise float32 with the reference's own order of operations per token, so it
agrees with the loop to float32 rounding on either device.
"""

from __future__ import annotations

import pytest
import torch
from test_wkv4 import make_inputs
from triton_interpret import kernel_module

from rwkvkit.ops.wkv4 import initial_wkv_state, wkv4_chunked_matmul, wkv4_reference, wkv4_step


@pytest.fixture
def tw(device: torch.device):
    """The kernels' module: interpreted on the CPU, compiled on the GPU."""
    return kernel_module(device, "rwkvkit.ops.triton_wkv4", "_wkv4_fwd_kernel")


def _run(fn, base, device, dtype=torch.float32):
    """Output, represented sums (S, Z) and the gradients of a loss on the output, on the sums and
    on the final maximum itself (so the maximum's chain is exercised too)."""
    xs = [t.to(device).clone().requires_grad_() for t in base]
    k, v = xs[2].to(dtype), xs[3].to(dtype)
    out, (n, d, m) = fn(-torch.exp(xs[0]), xs[1], k, v, tuple(xs[4:]))
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(out.shape, generator=g).to(device)
    S, Z = n * torch.exp(m), d * torch.exp(m)
    loss = (out.float() * weights).sum() + 1e-3 * (S.sum() + Z.sum()) + 0.1 * m.sum()
    loss.backward()
    return out.detach().float(), S.detach(), Z.detach(), [x.grad for x in xs]


NAMES = ["time_decay", "time_first", "k", "v", "num", "den", "max"]


@pytest.mark.parametrize(("B", "T", "C", "warm"), [(2, 37, 40, True), (1, 5, 33, False), (3, 64, 7, True)])
def test_kernel_matches_reference_and_chunked(
    tw, device: torch.device, B: int, T: int, C: int, warm: bool
) -> None:
    base = make_inputs(B, T, C, torch.float32, seed=T + C, warm=warm)
    o1, S1, Z1, g1 = _run(wkv4_reference, base, device)
    for fn in (tw.wkv4_triton, lambda *a: wkv4_chunked_matmul(*a, chunk_len=16)):
        o2, S2, Z2, g2 = _run(fn, base, device)
        # the tolerances of tests/test_wkv4.py (reassociated float32 sums)
        torch.testing.assert_close(o2, o1, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(S2, S1, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(Z2, Z1, atol=1e-4, rtol=1e-4)
        for name, a, b in zip(NAMES, g1, g2, strict=True):
            if not warm and name in ("num", "den", "max"):
                continue  # the empty state's max is -1e38: its gradients are 0 * huge in any form
            torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-4, msg=lambda m, n=name: f"d/d{n}: {m}")


def test_bf16_inputs(tw, device: torch.device) -> None:
    """bf16 k and v are read and widened: the result is the float32 one on the rounded inputs."""
    if device.type == "cpu":
        pytest.skip("Triton's interpreter has no bfloat16 (NumPy has none): bf16 runs on a GPU only")
    base = make_inputs(2, 100, 64, torch.float32, seed=2)
    rounded = [*base[:2], base[2].bfloat16().float(), base[3].bfloat16().float(), *base[4:]]
    o1, S1, Z1, g1 = _run(wkv4_reference, rounded, device)
    o2, S2, Z2, g2 = _run(tw.wkv4_triton, base, device, dtype=torch.bfloat16)
    torch.testing.assert_close(o2, o1, atol=1e-2, rtol=1e-2)  # the output is stored in bf16
    torch.testing.assert_close(S2, S1, atol=1e-4, rtol=1e-4)
    for name, a, b in zip(NAMES, g1, g2, strict=True):
        if name not in ("k", "v"):  # k and v's gradients are bf16 too
            torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3, msg=lambda m, n=name: f"d/d{n}: {m}")


@pytest.mark.parametrize("k_scale", [60.0, 5.0])
def test_extreme_values_stay_finite(tw, device: torch.device, k_scale: float) -> None:
    """Keys spanning hundreds of nats and decays from e^-e^-5 to e^-e^8 (and w = -inf)."""
    td, u, k, v, num, den, mx = (
        t.to(device) for t in make_inputs(2, 50, 16, torch.float32, seed=9, k_scale=k_scale)
    )
    td = td.clone()
    td[:4] = torch.tensor([8.0, 100.0, -5.0, 0.0])  # w = -e^100 = -inf in float32
    w = -torch.exp(td)
    ref, ref_state = wkv4_reference(w, u, k, v, (num, den, mx))
    out, state = tw.wkv4_triton(w, u, k, v, (num, den, mx))
    assert torch.isfinite(out).all() and all(torch.isfinite(s).all() for s in state)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(state[0] * torch.exp(state[2]), ref_state[0] * torch.exp(ref_state[2]))


def test_step_and_calls_in_pieces(tw, device: torch.device) -> None:
    """The decode step equals the PyTorch step; two calls with the state carried equal one."""
    td, u, k, v, num, den, mx = (t.to(device) for t in make_inputs(3, 40, 24, torch.float32, seed=4))
    w = -torch.exp(td)
    with torch.no_grad():
        y, s = tw.wkv4_triton_step(w, u, k[:, 0], v[:, 0], (num, den, mx))
    ref_y, ref_s = wkv4_step(w, u, k[:, 0], v[:, 0], (num, den, mx))
    torch.testing.assert_close(y, ref_y, atol=1e-6, rtol=1e-6)
    for a, b in zip(s, ref_s, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    whole, whole_state = tw.wkv4_triton(w, u, k, v, (num, den, mx))
    first, mid = tw.wkv4_triton(w, u, k[:, :17], v[:, :17], (num, den, mx))
    second, end = tw.wkv4_triton(w, u, k[:, 17:], v[:, 17:], mid)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=0, rtol=0)
    for a, b in zip(end, whole_state, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    leaves = [t.clone().requires_grad_() for t in (w, u)]
    out, new = tw.wkv4_triton_step(*leaves, k[:, 0], v[:, 0], (num, den, mx))  # autograd: the PyTorch step
    (out.sum() + new[0].sum()).backward()
    assert all(t.grad is not None for t in leaves)
    empty, _ = tw.wkv4_triton_step(w, u, k[:1, 0], v[:1, 0], initial_wkv_state(1, 24, device))
    torch.testing.assert_close(empty, v[:1, 0], atol=0, rtol=0)  # nothing before: the value itself


def test_model_on_the_kernel_equals_the_pytorch_forms(
    tw, device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_engine import REAL
    from test_fla_kernels import check_model_on_kernels

    from rwkvkit.ops import wkv4
    from rwkvkit.ops.registry import Backend

    kernel = Backend("triton", tw.wkv4_triton_step, tw.wkv4_triton)
    check_model_on_kernels(REAL["rwkv4"]().to(device), wkv4, kernel, device, 2e-5, monkeypatch)
