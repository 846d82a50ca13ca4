"""The fast linear layers (rwkvkit/ops/linear.py) against ``nn.Linear`` and the int8 definition.

Tolerances: fp32 1e-5 (the same sums in another memory order); 16-bit one rounding of the output
apart; int8 against its float32 definition at the bf16 activations' precision, and against the float
weights within a few percent (the quantization error itself).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rwkvkit.ops.linear import FastLinear, Int8Linear, int8_linear_reference, quantize_int8


@pytest.mark.parametrize("shape", [(64,), (1, 64), (8, 64), (2, 5, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fast_linear_matches_linear(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    ref = nn.Linear(64, 96, bias=False).to(dtype)
    fast = FastLinear.from_linear(copy.deepcopy(ref))
    x = torch.randn(shape).to(dtype)
    want = ref(x).float()
    got = fast(x)
    assert got.dtype == dtype and got.shape == want.shape
    # 16-bit: one rounding of the output (and a different summation order) apart.
    tol = 1e-5 if dtype == torch.float32 else 2e-2 * want.abs().max().item()
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=0)
    assert fast.state_dict().keys() == ref.state_dict().keys()
    torch.testing.assert_close(fast.weight, ref.weight, atol=0, rtol=0)  # same values, new layout


def test_fast_linear_gradients_match() -> None:
    torch.manual_seed(0)
    ref = nn.Linear(32, 48)
    fast = FastLinear.from_linear(copy.deepcopy(ref))
    x = torch.randn(3, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    ref(x).square().sum().backward()
    fast(x2).square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, atol=1e-5, rtol=0)


def test_quantize_int8_roundtrip() -> None:
    torch.manual_seed(0)
    w = torch.randn(50, 64) * torch.rand(50, 1) * 3
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert torch.equal(scale.to(torch.bfloat16).float(), scale)  # exact in bf16, for the kernel
    assert (scale * 127 >= w.abs().amax(dim=1)).all()  # no clipping
    # Round to nearest: every weight is within half a step of its int8 value.
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("in_features", [64, 40])
def test_int8_linear_matches_reference(in_features: int) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(in_features, 96, bias=False)
    layer = Int8Linear.from_linear(lin)
    assert layer.use_kernel == (in_features % 32 == 0)
    for shape in [(1, in_features), (7, in_features), (2, 3, in_features), (40, in_features)]:
        x = torch.randn(shape)
        want = int8_linear_reference(x, layer.weight_int8, layer.weight_scale)
        got = layer(x)
        assert got.dtype == x.dtype and got.shape == want.shape
        # bf16 activations in the kernel: ~2^-8 relative per input, summed over in_features terms.
        torch.testing.assert_close(got, want, atol=2e-2 * want.abs().max().item(), rtol=0)
        # The quantization error itself, against the float weights: a few percent at most.
        assert (got - lin(x)).abs().max() < 0.05 * lin(x).abs().max()


def test_int8_linear_refuses_bias() -> None:
    with pytest.raises(ValueError, match="bias"):
        Int8Linear.from_linear(nn.Linear(32, 32))
