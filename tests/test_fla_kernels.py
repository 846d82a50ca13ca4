"""fla-core's Triton kernels behind wkv5 and wkv7 (rwkvkit/ops/fla_kernels.py), against the reference
loops and the PyTorch chunked forms: outputs, final state and every gradient (the initial state's
too), in float32 and bfloat16, across fla's chunk boundaries, and the one-token step.

On the CPU the kernels run under Triton's interpreter (tests/triton_interpret.py), which computes
in exact float32; on a GPU (``-m cuda``) they are compiled, and float32 products there run in TF32
(see ops/fla_kernels.py), hence the two tolerances. Errors are ||got - want|| / ||want|| over a
whole tensor, the reference in float64.
"""

from __future__ import annotations

import pytest
import torch
from test_wkv5 import _inputs as wkv5_inputs
from test_wkv7 import _inputs as wkv7_inputs
from triton_interpret import kernel_module

from rwkvkit.ops.wkv5 import wkv5_chunked, wkv5_reference, wkv5_step
from rwkvkit.ops.wkv7 import wkv7_chunked, wkv7_reference, wkv7_step

# Relative error allowed for float32 inputs. Under the interpreter (exact float32) the RWKV-6 kernels
# and RWKV-7's 16-token scheme land at ~2e-7, like the PyTorch forms; the 64-token tensor-core
# scheme that RWKV-7's decay bound licenses (ops/fla_kernels.py) factorises e^(g_t - g_i) around
# the chunk's middle and measured up to 6e-5 (d/dbeta). On a GPU, TF32 products keep 10 bits (~1e-3).
FP32_TOL = {"cpu": 2e-4, "cuda": 5e-3}
# bfloat16 inputs (8 bits) against the float64 reference on the same rounded inputs: the kernels
# round their intermediate products to bf16 too, ~4e-3 each, over O(10)-term sums.
BF16_TOL = 3e-2


@pytest.fixture
def fla(device: torch.device):
    """The kernels' module: interpreted on the CPU, compiled on the GPU."""
    return kernel_module(device, "rwkvkit.ops.fla_kernels", "chunk_rwkv7")


def skip_bf16_on_cpu(device: torch.device, dtype: torch.dtype) -> None:
    if device.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter has no bfloat16 (NumPy has none): bf16 kernels run on a GPU only")


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm().clamp(min=1e-30))


def _shape(device: torch.device, long: bool = False) -> tuple[int, int, int, int]:
    """(B, T, H, N): small under the interpreter, the released head size on a GPU. T crosses fla's
    chunk boundaries (16 and 64 tokens) and leaves a partial last chunk."""
    if device.type == "cpu":
        return (2, 70 if long else 37, 2, 16)
    return (2, 300, 4, 64)


def _run(fn, inputs, weights):
    """fn's output, final state and the gradients of sum(out * w_out) + sum(state * w_state)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out, state = fn(*leaves)
    loss = (out.double() * weights[0]).sum() + (state.double() * weights[1]).sum()
    grads = torch.autograd.grad(loss, leaves)
    return out.detach(), state.detach(), grads


def _weights(out_shape, state_shape, device):
    g = torch.Generator().manual_seed(11)
    return torch.randn(out_shape, generator=g, dtype=torch.float64).to(device), torch.randn(
        state_shape, generator=g, dtype=torch.float64
    ).to(device)


def _check(kernel, reference, chunked, inputs, names, tol, device) -> None:
    """The kernel against the float64 reference; the PyTorch chunked form alongside, as a check
    that the reference itself is what the model runs."""
    ref_inputs = [t.double() for t in inputs]
    ref_out, ref_state = reference(*ref_inputs)
    w = _weights(ref_out.shape, ref_state.shape, device)
    out, state, grads = _run(kernel, inputs, w)
    _, _, ref_grads = _run(reference, ref_inputs, w)
    assert out.dtype == inputs[0].dtype and state.dtype == torch.float32
    assert rel(out, ref_out) < tol, f"output: {rel(out, ref_out):.2e}"
    assert rel(state, ref_state) < tol, f"final state: {rel(state, ref_state):.2e}"
    for name, g, want in zip(names, grads, ref_grads, strict=True):
        assert torch.isfinite(g).all() and rel(g, want) < tol, f"d/d{name}: {rel(g, want):.2e}"
    if inputs[0].dtype == torch.float32:
        ch_out, ch_state = chunked(*(t.detach() for t in inputs))
        assert rel(out, ch_out) < tol and rel(state, ch_state) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wkv7_chunked_kernel_matches_reference(fla, device: torch.device, dtype: torch.dtype) -> None:
    skip_bf16_on_cpu(device, dtype)
    B, T, H, N = _shape(device)
    x = [t.to(device) for t in wkv7_inputs(B, T, H, N, seed=3)]
    x = [t.to(dtype) for t in x[:6]] + [x[6] * 0.1]  # the state stays float32
    tol = FP32_TOL[device.type] if dtype == torch.float32 else BF16_TOL
    names = ("r", "log_w", "k", "v", "alpha", "beta", "state")
    _check(fla.wkv7_fla, wkv7_reference, wkv7_chunked, x, names, tol, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wkv5_chunked_kernel_matches_reference(fla, device: torch.device, dtype: torch.dtype) -> None:
    skip_bf16_on_cpu(device, dtype)
    B, T, H, N = _shape(device)
    # decay_log_scale 1: per-token decays from ~1 down to e^-30 and below, within one chunk
    x = [t.to(device) for t in wkv5_inputs(B, T, H, N, seed=4, decay_log_scale=1.0)]
    x = [t.to(dtype) for t in x[:4]] + [x[4].to(dtype), x[5] * 0.1]
    tol = FP32_TOL[device.type] if dtype == torch.float32 else BF16_TOL
    names = ("r", "log_w", "k", "v", "u", "state")
    _check(fla.wkv5_fla, wkv5_reference, wkv5_chunked, x, names, tol, device)


def test_wkv5_kernel_extreme_decays(fla, device: torch.device) -> None:
    """Trained RWKV-5/6 channels forget e^-100 per token and more; exp(-exp(huge)) gives -inf.
    The kernel is clamped like the PyTorch form and stays finite and right."""
    B, T, H, N = _shape(device)
    r, log_w, k, v, u, s = (t.to(device) for t in wkv5_inputs(B, T, H, N, seed=5, decay_log_scale=3.0))
    log_w[:, 3:6] = float("-inf")
    log_w[:, 10, :, : N // 2] = -1e5
    ref, ref_state = wkv5_reference(*(t.double() for t in (r, log_w, k, v, u, s)))
    out, state = fla.wkv5_fla(r, log_w, k, v, u, s)
    assert torch.isfinite(out).all() and torch.isfinite(state).all()
    assert rel(out, ref) < FP32_TOL[device.type] and rel(state, ref_state) < FP32_TOL[device.type]


def test_steps_match_the_pytorch_step(fla, device: torch.device) -> None:
    """The fused recurrent kernels for one token (decode), with a warm state; under autograd the
    backend falls back to the PyTorch step, whose gradients it then has."""
    B, _, H, N = _shape(device)
    x7 = [t.to(device) for t in wkv7_inputs(B, 1, H, N, seed=6)]
    x7 = [t[:, 0] for t in x7[:6]] + [x7[6]]
    x5 = [t.to(device) for t in wkv5_inputs(B, 1, H, N, seed=7)]
    x5 = [t[:, 0] for t in x5[:4]] + x5[4:]
    for kernel, step, x in ((fla.wkv7_fla_step, wkv7_step, x7), (fla.wkv5_fla_step, wkv5_step, x5)):
        ref_y, ref_s = step(*(t.double() for t in x))
        with torch.no_grad():
            y, s = kernel(*x)
        assert y.shape == ref_y.shape and s.shape == ref_s.shape
        assert rel(y, ref_y) < 2e-5 and rel(s, ref_s) < 2e-5  # no products: float32 on either device
        leaves = [t.clone().requires_grad_(True) for t in x]
        y, s = kernel(*leaves)
        (y.sum() + s.sum()).backward()
        assert all(t.grad is not None for t in leaves)


@pytest.mark.slow
def test_wkv7_kernel_long_sequence_in_pieces(fla, device: torch.device) -> None:
    """Two calls with the state carried equal one call, across several of fla's 64-token chunks."""
    B, T, H, N = _shape(device, long=True)
    x = [t.to(device) for t in wkv7_inputs(B, T, H, N, seed=8)]
    whole, whole_state = fla.wkv7_fla(*x)
    first, mid = fla.wkv7_fla(*(t[:, :29] for t in x[:6]), x[6])
    second, end = fla.wkv7_fla(*(t[:, 29:] for t in x[:6]), mid)
    assert rel(torch.cat([first, second], dim=1), whole) < FP32_TOL[device.type]
    assert rel(end, whole_state) < FP32_TOL[device.type]


def check_model_on_kernels(model, op, kernels, device, tol: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole model with ``kernels`` as ``op``'s backend (as on a GPU; on the CPU under the
    interpreter) against the same model on the PyTorch forms: prefill, two decode steps (the first
    step's new state shows in the second) and every parameter's gradient."""
    from rwkvkit.testing import parameter_gradients

    # 3 rows: a batch unlike the 2 heads, so a (H, N) decay read as (B, H, N) cannot pass unseen
    tokens = torch.randint(0, 64, (3, 40), generator=torch.Generator().manual_seed(0)).to(device)

    def run():
        with torch.no_grad():
            logits, state = model(tokens)
            _, state = model.step(tokens[:, 0], state)
            step, _ = model.step(tokens[:, 1], state)
        grads = parameter_gradients(model, lambda: model(tokens[:, :20])[0].logsumexp(-1).mean())
        return logits, step, grads

    monkeypatch.setattr(op.BACKENDS, "_table", {(device.type, None): op.BACKENDS.default})
    want = run()
    op.BACKENDS.register(kernels, device.type)
    got = run()
    assert rel(got[0], want[0]) < tol and rel(got[1], want[1]) < tol
    for key, g in want[2].items():
        if g is not None and g.norm() > 0:
            assert rel(got[2][key], g) < 10 * tol, key  # through a dozen layers of products


@pytest.mark.parametrize("name", ["rwkv5", "rwkv6", "rwkv7"])
def test_models_on_the_kernels_equal_the_pytorch_forms(
    fla, device: torch.device, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RWKV-5's static (H, N) decay, RWKV-6's per-token one, RWKV-7's delta rule, in whole models."""
    from test_engine import REAL

    from rwkvkit.ops import wkv5, wkv7
    from rwkvkit.ops.registry import Backend

    if name == "rwkv7":
        op, kernels = wkv7, Backend("fla", fla.wkv7_fla_step, fla.wkv7_fla)
    else:
        op, kernels = wkv5, Backend("fla", fla.wkv5_fla_step, fla.wkv5_fla)
    check_model_on_kernels(REAL[name]().to(device), op, kernels, device, FP32_TOL[device.type], monkeypatch)
