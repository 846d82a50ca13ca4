"""Linear layers for inference on the CPU: weight formats, layouts and kernels chosen for speed.

Decoding one token is a chain of matrix-vector products, so its speed is the speed at which the
weights stream from memory. What runs (measured on the project's Xeon, 1-2 threads;
benchmarks/kernels.py):

- a few rows (decode, batched decode: up to NATIVE_MAX_ROWS) with the native kernels built
  (rwkvkit/ops/native.py): ``torch.ops.rwkvkit.linear_*``, one loop per weight format that streams
  fp32, bf16, fp16, int8 and int4 weights at memory speed;
- without them, PyTorch's best one-row kernel per dtype: fp32 ``F.linear`` on a column-major copy
  of the weight (same values, same ``state_dict``), bf16 ``torch.mv``, fp16 ``F.linear``, int8
  ``torch._weight_int8pack_mm``, int4 ``torch._weight_int4pack_mm_for_cpu``;
- many rows (prefill): ``F.linear`` (MKL / oneDNN, AMX for bf16), the quantized weights widened to
  bf16 first (once per call, spread over the rows).

Weight formats:
- int8: per-output-row symmetric, ``w ~= q * scale``, |q| <= 127 (:func:`quantize_int8`);
- int4: groups of INT4_GROUP inputs, asymmetric, ``w ~= q * scale + minimum``, q in [0, 15], the
  scale and minimum bf16 values (:func:`quantize_int4`).
The native integer kernels also round the activations, per block of 64, to int8 (as llama.cpp's
q8_0 does), which is where their error beyond the weights' own comes from; tests/test_linear.py
bounds it.

Every fast form has a plain sibling (``F.linear`` on dequantized weights) that tests compare with.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native

# Up to this many rows the native kernels run (each tile of weights is read once for all rows);
# above it, a GEMM library's blocking wins (prefill).
NATIVE_MAX_ROWS = 16
# _weight_int8pack_mm is fast for a few rows (decode) and slow for many (4x slower than a bf16
# matmul at 512 rows here); above this many rows the int8 weight is widened to bf16 (exact: |q| <=
# 127 fits bf16's 8-bit significand) for one oneDNN matmul, its cost spread over the rows.
INT8_KERNEL_MAX_ROWS = 16
# _weight_int8pack_mm (PyTorch 2.4+, CPU) computes wrong results or crashes for some inner sizes
# (K = 8 or 24 or 65 did here); every K that is a multiple of 32 was right, and RWKV's widths are.
_INT8PACK_K_MULTIPLE = 32
# int4 groups: 64 inputs share a scale and a minimum (4.5 bits per weight with their bf16 pair).
INT4_GROUP = 64
# The native integer kernels' tiles: 16 output rows, inputs in blocks of 64.
_ROW_TILE, _INPUT_BLOCK = 16, 64


def column_major(weight: Tensor) -> Tensor:
    """The same (out, in) matrix stored transposed in memory: ``x @ W^T`` then reads it row by row."""
    return weight.t().contiguous().t()


def _wants_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _native_float_kernel(dtype: torch.dtype) -> Any:
    ops = native.ops()
    if ops is None:
        return None
    return {
        torch.float32: ops.linear_f32,
        torch.bfloat16: ops.linear_bf16,
        torch.float16: ops.linear_f16,
    }.get(dtype)


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight^T`` (no bias) for inference: the native kernel for a few rows on the CPU when
    built, else ``F.linear``. The one dispatch point for float weights; weight (out, in)."""
    if weight.device.type == "cpu" and not _wants_grad(x, weight):
        kernel = _native_float_kernel(weight.dtype)
        rows = x.numel() // x.shape[-1]
        if kernel is not None and rows <= NATIVE_MAX_ROWS and weight.is_contiguous():
            return kernel(x.reshape(rows, -1), weight).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight)


class FastLinear(nn.Linear):
    """An ``nn.Linear`` whose forward picks the fastest measured kernel for its dtype and input.

    Same parameters, same ``state_dict``, same gradients: only the memory layout of an fp32 weight
    (column-major where MKL serves decode) and the kernel for a few rows differ, so it can stand in
    for any ``nn.Linear``. The kernel is chosen when the layer is made (:meth:`from_linear`).
    """

    native: bool

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FastLinear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        weight = linear.weight
        on_cpu = weight.device.type == "cpu"
        new.native = on_cpu and _native_float_kernel(weight.dtype) is not None
        if weight.dtype == torch.float32 and on_cpu and not new.native:
            weight = nn.Parameter(column_major(weight.detach()), requires_grad=weight.requires_grad)
        elif new.native and not weight.is_contiguous():
            weight = nn.Parameter(weight.detach().contiguous(), requires_grad=weight.requires_grad)
        new.weight = weight
        new.bias = linear.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., in) -> (..., out)
        w = self.weight
        if self.native and not _wants_grad(x, w) and x.numel() <= NATIVE_MAX_ROWS * self.in_features:
            y = linear(x, w)
            return y if self.bias is None else y + self.bias
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


# ---------------------------------------------------------------------------------------------
# int8


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


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    """t with zero rows appended up to ``rows`` (the native kernels work on whole tiles of 16)."""
    return t if t.shape[0] == rows else torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def _tiles(n: int) -> int:
    return -(-n // _ROW_TILE)


def pack_int8(q: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """(N, K) int8 and (N,) scales -> the native kernel's layout (N/16, K/4, 16, 4), 4 inputs of 16
    rows per 64 bytes, and the scales, both padded with zero rows to whole tiles of 16."""
    N, K = q.shape
    T = _tiles(N)
    packed = _pad_rows(q, T * _ROW_TILE).reshape(T, _ROW_TILE, K // 4, 4).permute(0, 2, 1, 3).contiguous()
    return packed, _pad_rows(scale, T * _ROW_TILE)


def unpack_int8(packed: Tensor, n_out: int) -> Tensor:
    """The (n_out, K) int8 values of :func:`pack_int8`'s layout."""
    T, K4, R, _ = packed.shape
    return packed.permute(0, 2, 1, 3).reshape(T * R, K4 * 4)[:n_out]


def int8pack_available(in_features: int, device: torch.device | str = "cpu") -> bool:
    """Whether PyTorch's fused int8 kernel can serve a layer with this input width on this device."""
    return (
        torch.device(device).type == "cpu"
        and hasattr(torch, "_weight_int8pack_mm")
        and in_features % _INT8PACK_K_MULTIPLE == 0
    )


def _native_shape_ok(in_features: int, device: torch.device) -> bool:
    return device.type == "cpu" and native.ops() is not None and in_features % _INPUT_BLOCK == 0


class Int8Linear(nn.Module):
    """Weight-only int8 linear layer (no bias): int8 weights, per-output-channel scales.

    The kernel, and with it the weights' layout, is chosen when the layer is made: ``"native"``
    (packed for torch.ops.rwkvkit.linear_q8, activations rounded to int8 per block of 64),
    ``"int8pack"`` (torch._weight_int8pack_mm with bf16 activations), or ``"reference"`` (the
    dequantizing form, for widths those kernels mishandle). Many rows (prefill) and autograd use a
    float matmul on the widened weights. The output has the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, *, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self._setup(torch.zeros(out_features, in_features, dtype=torch.int8, device=device),
                    torch.ones(out_features, dtype=torch.float32, device=device))  # fmt: skip

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        if linear.bias is not None:
            raise ValueError("Int8Linear is for bias-free layers (all of RWKV's are)")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new._setup(*quantize_int8(linear.weight))
        return new

    def _setup(self, q: Tensor, scale: Tensor) -> None:
        self.out_features, self.in_features = q.shape
        if _native_shape_ok(self.in_features, q.device):
            self.kernel = "native"
            q, scale = pack_int8(q, scale)
        elif int8pack_available(self.in_features, q.device):
            self.kernel = "int8pack"
        else:
            self.kernel = "reference"
        self.register_buffer("qweight", q)
        self.register_buffer("weight_scale", scale)  # (out,), or padded to whole tiles (native)
        self._scale_bf16: Tensor | None = None

    @property
    def weight_int8(self) -> Tensor:
        """The (out, in) int8 values, whatever the stored layout."""
        return unpack_int8(self.qweight, self.out_features) if self.kernel == "native" else self.qweight

    @property
    def scale(self) -> Tensor:
        """The (out,) float32 scales."""
        return self.weight_scale[: self.out_features]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., in) -> (..., out) in x's dtype
        rows = x.numel() // self.in_features
        x2 = x.reshape(rows, self.in_features)
        if self.kernel == "reference" or _wants_grad(x):
            y = int8_linear_reference(x2, self.weight_int8, self.scale)
        elif self.kernel == "native" and rows <= NATIVE_MAX_ROWS:
            y = native.ops().linear_q8(x2, self.qweight, self.weight_scale, self.out_features)
        else:
            if self._scale_bf16 is None or self._scale_bf16.device != x.device:
                self._scale_bf16 = self.scale.to(torch.bfloat16)  # exact: see quantize_int8
            xb = x2.to(torch.bfloat16)
            if self.kernel == "int8pack" and rows <= INT8_KERNEL_MAX_ROWS:
                y = torch._weight_int8pack_mm(xb, self.qweight, self._scale_bf16)
            else:  # prefill: one bf16 matmul on the widened weight, then the per-channel scales
                y = F.linear(xb, self.weight_int8.to(torch.bfloat16)) * self._scale_bf16
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# int4


def quantize_int4(weight: Tensor, group: int = INT4_GROUP) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric group-wise int4: ``w ~= q * scale + minimum`` per group of ``group`` inputs.

    weight: (out, in), in a multiple of ``group``. Returns q (out, in) uint8 in [0, 15], and scale,
    minimum (out, in / group) float32 holding bfloat16 values (the kernels read them as bf16). The
    minimum is rounded down and the scale up, so q = 0 and q = 15 still span the group's range.
    """
    out_features, in_features = weight.shape
    if in_features % group:
        raise ValueError(f"int4 groups of {group} need in_features to be a multiple of it, got {in_features}")
    w = weight.detach().float().reshape(out_features, in_features // group, group)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    minimum = -bf16_representable(-lo)  # rounded towards -inf
    scale = bf16_representable(((hi - minimum) / 15).clamp(min=1e-30))
    q = torch.round((w - minimum[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    return q.reshape(out_features, in_features), scale, minimum


def dequantize_int4(q: Tensor, scale: Tensor, minimum: Tensor) -> Tensor:
    """The float32 (out, in) weights that int4 values stand for."""
    out_features, in_features = q.shape
    groups = scale.shape[1]
    w = q.float().reshape(out_features, groups, -1) * scale[..., None] + minimum[..., None]
    return w.reshape(out_features, in_features)


def int4_linear_reference(x: Tensor, q: Tensor, scale: Tensor, minimum: Tensor) -> Tensor:
    """The definition in float32: ``x @ dequantize_int4(q, scale, minimum)^T``."""
    return F.linear(x.float(), dequantize_int4(q, scale, minimum))


def pack_int4(q: Tensor, scale: Tensor, minimum: Tensor) -> tuple[Tensor, Tensor]:
    """int4 values and their group parameters -> the native kernel's layouts.

    packed (N/16, K/8, 16, 4) uint8: byte j of a row's 4 holds input k0 + j in its low nibble and
    k0 + 4 + j in its high one; scale_min (N/16, K/64, 2, 16) bf16.
    """
    N, K = q.shape
    T = _tiles(N)
    q5 = _pad_rows(q, T * _ROW_TILE).reshape(T, _ROW_TILE, K // 8, 2, 4)
    packed = (q5[:, :, :, 0] | (q5[:, :, :, 1] << 4)).permute(0, 2, 1, 3).contiguous()
    sm = torch.stack([_pad_rows(scale, T * _ROW_TILE), _pad_rows(minimum, T * _ROW_TILE)])
    sm = sm.reshape(2, T, _ROW_TILE, -1)  # (2, T, 16, G)
    return packed, sm.permute(1, 3, 0, 2).to(torch.bfloat16).contiguous()


def unpack_int4(packed: Tensor, scale_min: Tensor, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
    """The inverse of :func:`pack_int4`: q (n_out, K) uint8, scale and minimum (n_out, K/64) float32."""
    T, K8, R, _ = packed.shape
    lo, hi = packed & 0x0F, packed >> 4  # (T, K/8, 16, 4) each
    q = torch.stack([lo, hi], dim=3).permute(0, 2, 1, 3, 4).reshape(T * R, K8 * 8)
    sm = scale_min.float().permute(2, 0, 3, 1).reshape(2, T * R, -1)  # (2, N, G)
    return q[:n_out], sm[0, :n_out], sm[1, :n_out]


def _int4pack_available(out_features: int, in_features: int, group: int, device: torch.device) -> bool:
    return (
        device.type == "cpu"
        and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
        and out_features % 16 == 0
        and in_features % 2 == 0
        and group in (32, 64, 128, 256)
    )


class Int4Linear(nn.Module):
    """Weight-only int4 linear layer (no bias): groups of ``group`` inputs share a scale and minimum.

    Kernels, chosen when the layer is made: ``"native"`` (torch.ops.rwkvkit.linear_q4, groups of
    64), ``"int4pack"`` (torch._weight_int4pack_mm_for_cpu, bf16 activations; its zero point is
    ``minimum + 8 scale`` rounded to bf16), ``"reference"`` (dequantize, then a float matmul).
    Many rows and autograd use a bf16 (or float32) matmul on the dequantized weights.
    """

    def __init__(self, q: Tensor, scale: Tensor, minimum: Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group = self.in_features // scale.shape[1]
        if self.group == _INPUT_BLOCK and _native_shape_ok(self.in_features, q.device):
            self.kernel = "native"
            packed, scale_min = pack_int4(q, scale, minimum)
            self.register_buffer("qweight", packed)
            self.register_buffer("scale_min", scale_min)
        elif _int4pack_available(self.out_features, self.in_features, self.group, q.device):
            self.kernel = "int4pack"
            self.register_buffer(
                "qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
            )
            zero = minimum + 8 * scale  # (N, G) -> its (G, N, 2) bf16 scales_and_zeros
            self.register_buffer(
                "scale_zero",
                torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16),
            )
            # That layout cannot be read back: the values stay beside it, two per byte, for prefill
            # and autograd (the fallback then holds the int4 weights twice, still 1/4 of bf16).
            self.register_buffer("nibbles", q[:, 0::2] | (q[:, 1::2] << 4))
            self.register_buffer("scale", scale)
            self.register_buffer("minimum", minimum)
        else:
            self.kernel = "reference"
            self.register_buffer("qweight", q)
            self.register_buffer("scale", scale)
            self.register_buffer("minimum", minimum)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int = INT4_GROUP) -> Int4Linear:
        """Quantize ``linear``'s weight; widths that ``group`` does not divide take the largest
        power of two below it that does (or one group per row)."""
        if linear.bias is not None:
            raise ValueError("Int4Linear is for bias-free layers (all of RWKV's are)")
        width = linear.in_features
        while group > 1 and width % group:
            group //= 2
        return cls(*quantize_int4(linear.weight, group if width % group == 0 and group > 1 else width))

    def int4_values(self) -> tuple[Tensor, Tensor, Tensor]:
        """q (out, in) uint8, scale and minimum (out, in / group) float32, whatever the layout."""
        if self.kernel == "native":
            return unpack_int4(self.qweight, self.scale_min, self.out_features)
        if self.kernel == "int4pack":
            q = torch.stack([self.nibbles & 0x0F, self.nibbles >> 4], dim=-1).reshape(self.out_features, -1)
            return q, self.scale, self.minimum
        return self.qweight, self.scale, self.minimum

    def dequantize(self) -> Tensor:
        return dequantize_int4(*self.int4_values())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group={self.group}, "
                f"kernel={self.kernel}")  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        # x: (..., in) -> (..., out) in x's dtype
        rows = x.numel() // self.in_features
        x2 = x.reshape(rows, self.in_features)
        if self.kernel == "reference" or _wants_grad(x):
            y = int4_linear_reference(x2, *self.int4_values())
        elif rows > NATIVE_MAX_ROWS:  # prefill: one bf16 matmul on the dequantized weights
            y = F.linear(x2.to(torch.bfloat16), self.dequantize().to(torch.bfloat16))
        elif self.kernel == "native":
            y = native.ops().linear_q4(x2, self.qweight, self.scale_min, self.out_features)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(torch.bfloat16), self.qweight, self.group, self.scale_zero
            )
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
