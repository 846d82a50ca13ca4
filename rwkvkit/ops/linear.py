"""Linear layers for inference on the CPU: weight layouts and kernels chosen for speed.

Decoding one token is a chain of matrix-vector products, so its speed is the speed at which the
weights stream from memory. PyTorch's default ``nn.Linear`` path does not reach it for every
dtype; what was measured here (Xeon with AVX-512/AMX, 1-2 threads; benchmarks/kernels.py):

- float32: ``F.linear`` with the weight stored column-major (``W.t().contiguous().t()``, same
  shape, same values, same ``state_dict`` key) runs as ``x @ W^T`` on a contiguous matrix, which
  MKL streams faster than the row-major default;
- bfloat16: ``torch.mv`` on the row-major weight beats ``F.linear`` by ~1.5x for one row; with
  more rows ``F.linear`` (oneDNN, AMX) wins;
- float16: ``F.linear`` row-major is the best of the three (``torch.mv`` in fp16 is slow);
- int8 weight-only: ``torch._weight_int8pack_mm`` (int8 weights, per-output-channel scales,
  bf16 activations, fp32 accumulation inside) reads a quarter of the fp32 bytes.

Every fast form here has a plain sibling (``F.linear`` on dequantized weights) that tests compare
it with; see tests/test_linear.py and tests/test_inference.py for the tolerances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# _weight_int8pack_mm is fast for a few rows (decode) and slow for many (4x slower than a bf16
# matmul at 512 rows here); above this many rows the int8 weight is widened to bf16 (exact: |q| <=
# 127 fits bf16's 8-bit significand) for one oneDNN matmul, its cost spread over the rows.
INT8_KERNEL_MAX_ROWS = 16
# _weight_int8pack_mm (PyTorch 2.4+, CPU) computes wrong results or crashes for some inner sizes
# (K = 8 or 24 or 65 did here); every K that is a multiple of 32 was right, and RWKV's widths are.
_INT8PACK_K_MULTIPLE = 32


def column_major(weight: Tensor) -> Tensor:
    """The same (out, in) matrix stored transposed in memory: ``x @ W^T`` then reads it row by row."""
    return weight.t().contiguous().t()


class FastLinear(nn.Linear):
    """An ``nn.Linear`` whose forward picks the fastest measured kernel for its dtype and input.

    Same parameters, same ``state_dict``, same gradients: only the memory layout of an fp32 weight
    and the kernel for one-row bf16 inputs differ, so it can stand in for any ``nn.Linear``.
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FastLinear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        weight = linear.weight
        if weight.dtype == torch.float32 and weight.device.type == "cpu":
            weight = nn.Parameter(column_major(weight.detach()), requires_grad=weight.requires_grad)
        new.weight = weight
        new.bias = linear.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., in) -> (..., out)
        w = self.weight
        if (
            w.dtype == torch.bfloat16
            and x.dtype == torch.bfloat16
            and x.numel() == self.in_features
            and w.device.type == "cpu"
        ):
            y = torch.mv(w, x.reshape(-1))  # one row: matrix-vector beats gemm for bf16
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, w, self.bias)


def bf16_representable(x: Tensor) -> Tensor:
    """Round positive float32 values up to the next bfloat16 value, so a bf16 copy is exact."""
    bits = x.float().contiguous().view(torch.int32)
    return ((bits + 0xFFFF) & -0x10000).view(torch.float32)  # clear the 16 bits bf16 drops, rounding up


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: ``weight ~= q * scale[:, None]``, ``|q| <= 127``.

    weight: (out, in). Returns q (out, in) int8 and scale (out,) float32. The scale is rounded up
    to a bfloat16 value so the bf16 kernel uses exactly the scale the reference uses.
    """
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1).clamp(min=1e-30)
    scale = bf16_representable(absmax / 127)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def int8_linear_reference(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    """The definition in float32: ``x @ (q * scale)^T``. x: (..., in) -> (..., out) float32."""
    return F.linear(x.float(), q.float() * scale[:, None])


def int8pack_available(in_features: int, device: torch.device | str = "cpu") -> bool:
    """Whether the fused int8 kernel can serve a layer with this input width on this device."""
    return (
        torch.device(device).type == "cpu"
        and hasattr(torch, "_weight_int8pack_mm")
        and in_features % _INT8PACK_K_MULTIPLE == 0
    )


class Int8Linear(nn.Module):
    """Weight-only int8 linear layer (no bias): int8 weights, per-output-channel scales.

    On the CPU it runs ``torch._weight_int8pack_mm`` with bfloat16 activations (the kernel's fast
    input type; it accumulates in fp32) for up to INT8_KERNEL_MAX_ROWS rows, and a bf16 matmul on
    the widened weight for more; elsewhere, or for widths the kernel mishandles, it uses
    the pure-PyTorch dequantizing form. The output has the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, *, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.use_kernel = int8pack_available(in_features, device)
        self._scale_bf16: Tensor | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        if linear.bias is not None:
            raise ValueError("Int8Linear is for bias-free layers (all of RWKV's are)")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        q, scale = quantize_int8(linear.weight)
        new.register_buffer("weight_int8", q)
        new.register_buffer("weight_scale", scale)
        new.use_kernel = int8pack_available(linear.in_features, q.device)
        new._scale_bf16 = None
        return new

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.use_kernel}"

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., in) -> (..., out) in x's dtype
        if not self.use_kernel or (torch.is_grad_enabled() and x.requires_grad):
            return int8_linear_reference(x, self.weight_int8, self.weight_scale).to(x.dtype)
        if self._scale_bf16 is None or self._scale_bf16.device != x.device:
            self._scale_bf16 = self.weight_scale.to(torch.bfloat16)  # exact: see quantize_int8
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if x2.shape[0] <= INT8_KERNEL_MAX_ROWS:
            y = torch._weight_int8pack_mm(x2, self.weight_int8, self._scale_bf16)
        else:  # prefill: one bf16 matmul on the widened weight, then the per-channel scales
            y = F.linear(x2, self.weight_int8.to(torch.bfloat16)) * self._scale_bf16
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
