"""The fast linear layers (rwkvkit/ops/linear.py) against ``nn.Linear`` and the int8 / int4
definitions, with the native kernels and without them (the portable PyTorch ones).

Tolerances: fp32 1e-5 (the same sums in another memory order); 16-bit one rounding of the output
apart; int8 / int4 against their float32 definitions at the rounded activations' precision (bf16,
or int8 per block of 64 in the native kernels), and against the float weights within the
quantization error itself.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from rwkvkit.ops import native
from rwkvkit.ops.linear import (
    FastLinear,
    Int4Linear,
    Int8Linear,
    dequantize_int4,
    int4_linear_reference,
    int8_linear_reference,
    pack_int4,
    pack_int8,
    quantize_int4,
    quantize_int8,
    unpack_int4,
    unpack_int8,
)


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


KERNELS = {"native": contextlib.nullcontext, "portable": native.disabled}


@pytest.mark.parametrize("kernels", list(KERNELS))
@pytest.mark.parametrize("in_features", [64, 40])
def test_int8_linear_matches_reference(in_features: int, kernels: str) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(in_features, 96, bias=False)
    with KERNELS[kernels]():
        layer = Int8Linear.from_linear(lin)
        expected = "int8pack" if in_features % 32 == 0 else "reference"
        if kernels == "native" and native.ops() is not None and in_features % 64 == 0:
            expected = "native"
        assert layer.kernel == expected
        q, scale = quantize_int8(lin.weight)
        assert torch.equal(layer.weight_int8, q) and torch.equal(layer.scale, scale)  # any layout reads back
        for shape in [(1, in_features), (7, in_features), (2, 3, in_features), (40, in_features)]:
            x = torch.randn(shape)
            want = int8_linear_reference(x, q, scale)
            got = layer(x)
            assert got.dtype == x.dtype and got.shape == want.shape
            # bf16 activations (int8pack, prefill) ~2^-8 relative per input; int8 per block of 64
            # (native) up to 2^-8 of the block's largest: summed over in_features terms.
            torch.testing.assert_close(got, want, atol=2e-2 * want.abs().max().item(), rtol=0)
            # The quantization error itself, against the float weights: a few percent at most.
            assert (got - lin(x)).abs().max() < 0.05 * lin(x).abs().max()


def test_quantize_int4_roundtrip() -> None:
    torch.manual_seed(0)
    w = torch.randn(50, 128) * torch.rand(50, 1) * 3
    q, scale, minimum = quantize_int4(w)
    assert q.dtype == torch.uint8 and q.max() <= 15 and scale.shape == minimum.shape == (50, 2)
    for t in (scale, minimum):  # bf16 values: what the kernels read
        assert torch.equal(t.to(torch.bfloat16).float(), t)
    groups = w.reshape(50, 2, 64)
    assert (minimum <= groups.amin(-1)).all() and (minimum + 15 * scale >= groups.amax(-1) - 1e-6).all()
    # Round to nearest: every weight is within half a step of its int4 value.
    err = (dequantize_int4(q, scale, minimum) - w).reshape(50, 2, 64).abs()
    assert (err <= scale[..., None] / 2 + 1e-6).all()


@pytest.mark.parametrize("out_features", [96, 37])
def test_packed_layouts_read_back(out_features: int) -> None:
    torch.manual_seed(1)
    w = torch.randn(out_features, 128)
    q8, s8 = quantize_int8(w)
    packed, scale = pack_int8(q8, s8)
    assert packed.shape[0] * 16 >= out_features and scale.shape[0] == packed.shape[0] * 16
    assert torch.equal(unpack_int8(packed, out_features), q8)
    q4, s4, m4 = quantize_int4(w)
    back = unpack_int4(*pack_int4(q4, s4, m4), out_features)
    for a, b in zip(back, (q4, s4, m4), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kernels", list(KERNELS))
@pytest.mark.parametrize("in_features", [128, 96, 40])
def test_int4_linear_matches_reference(in_features: int, kernels: str) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(in_features, 48, bias=False)
    with KERNELS[kernels]():
        layer = Int4Linear.from_linear(lin)
        # groups of 64 where they fit, else the largest power of two that divides the width
        assert layer.group == {128: 64, 96: 32, 40: 8}[in_features]
        q, scale, minimum = layer.int4_values()
        assert torch.equal(dequantize_int4(q, scale, minimum), layer.dequantize())
        for shape in [(1, in_features), (5, in_features), (2, 3, in_features), (40, in_features)]:
            x = torch.randn(shape)
            want = int4_linear_reference(x, q, scale, minimum)
            got = layer(x)
            assert got.dtype == x.dtype and got.shape == want.shape
            torch.testing.assert_close(got, want, atol=2e-2 * want.abs().max().item(), rtol=0)
            # int4's own error against the float weights: a sixteenth of each group's range
            assert (got - lin(x)).abs().max() < 0.25 * lin(x).abs().max()


def test_int8_linear_refuses_bias() -> None:
    with pytest.raises(ValueError, match="bias"):
        Int8Linear.from_linear(nn.Linear(32, 32))
