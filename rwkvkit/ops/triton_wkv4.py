"""RWKV-4 WKV as Triton kernels: the CUDA backend of :func:`rwkvkit.ops.wkv4.wkv4`.

The recurrence is per channel and sequential in time, so one program owns a block of channels of
one batch row and walks the tokens in order, its state in registers (the layout of BlinkDL's CUDA
kernel, one thread per channel). The arithmetic is :func:`~rwkvkit.ops.wkv4.wkv4_step`'s,
token by token, so the forward equals the reference loop to rounding.

The backward runs the tokens in reverse with the gradients of the sums kept in the state's own
scale. With ``S_t = num_t e^(max_t)`` and ``Z_t = den_t e^(max_t)`` (ops/wkv4.py), write
``gS_t = dL/dS_t``; the kernel carries ``ga_t = gS_t e^(max_t)`` (= dL/dnum_t) and
``gb_t = gZ_t e^(max_t)``, which obey

    ga_t = gy_t e^(max_t) / D_t + e^(max_t + w - max_{t+1}) ga_{t+1}        (gb_t likewise, with -gy_t o_t)

where ``D_t = Z_t + e^(u + k_t)`` is the output's denominator. Every factor is an exponential of
a non-positive number (``max_{t+1} = max(max_t + w, k_t)``), so nothing overflows for any decay
or key. The gradients of k, v and w read the same factors; the final state's maximum is a
function of its own (the largest exponent), whose gradient follows the chain of maxima back to
the token (or the initial state) it came from. The forward saves the state before every token
(3 x (B, T, C) float32) for the backward, the way the official kernel keeps its per-token sums.

Inputs as in ops/wkv4.py: w, u (C,) float32; k, v (B, T, C) (float32 in the model; bf16 and fp16
are read and widened); state 3 x (B, C) float32. The output has k's dtype, the state is float32.
Tested against the reference loop and the chunked form (outputs, final state, every gradient)
under ``TRITON_INTERPRET=1`` on the CPU (tests/test_triton_wkv4.py) and on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from .registry import Backend
from .wkv4 import _MOST_NEGATIVE_DECAY, EMPTY_MAX, WKVState, wkv4_step

BLOCK_C = 32  # channels per program: one warp, one channel per thread


@triton.jit
def _wkv4_fwd_kernel(
    w_ptr, u_ptr, k_ptr, v_ptr, num_ptr, den_ptr, max_ptr,
    out_ptr, num_out_ptr, den_out_ptr, max_out_ptr, saved_ptr,
    T, C, SAVE: tl.constexpr, BLOCK: tl.constexpr, EMPTY: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = c < C
    w = tl.load(w_ptr + c, mask=mask, other=0.0)
    u = tl.load(u_ptr + c, mask=mask, other=0.0)
    num = tl.load(num_ptr + b * C + c, mask=mask, other=0.0)
    den = tl.load(den_ptr + b * C + c, mask=mask, other=0.0)
    mx = tl.load(max_ptr + b * C + c, mask=mask, other=EMPTY)
    seq = b * T * C + c  # token 0 of this row's channels in (B, T, C)
    plane = T * C * tl.num_programs(0).to(tl.int64)  # one (B, T, C) plane of the saved states
    for t in range(T):
        at = seq + t * C
        if SAVE:  # the state before token t, for the backward
            tl.store(saved_ptr + at, num, mask=mask)
            tl.store(saved_ptr + plane + at, den, mask=mask)
            tl.store(saved_ptr + 2 * plane + at, mx, mask=mask)
        k = tl.load(k_ptr + at, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + at, mask=mask, other=0.0).to(tl.float32)
        # output: the stored sums plus the current token with its bonus u
        bonus = u + k
        m = tl.maximum(mx, bonus)
        e_state = tl.exp(mx - m)
        e_cur = tl.exp(bonus - m)
        out = (e_state * num + e_cur * v) / (e_state * den + e_cur)
        tl.store(out_ptr + at, out.to(out_ptr.dtype.element_ty), mask=mask)
        # state: decay by one step, add the current token without the bonus
        decayed = mx + w
        m = tl.maximum(decayed, k)
        e_state = tl.exp(decayed - m)
        e_cur = tl.exp(k - m)
        num = e_state * num + e_cur * v
        den = e_state * den + e_cur
        mx = m
    tl.store(num_out_ptr + b * C + c, num, mask=mask)
    tl.store(den_out_ptr + b * C + c, den, mask=mask)
    tl.store(max_out_ptr + b * C + c, mx, mask=mask)


@triton.jit
def _wkv4_bwd_kernel(
    w_ptr, u_ptr, k_ptr, v_ptr, saved_ptr, num_end_ptr, den_end_ptr, max_end_ptr,
    gy_ptr, g_num_ptr, g_den_ptr, g_max_ptr,
    gk_ptr, gv_ptr, gw_ptr, gu_ptr, g_num0_ptr, g_den0_ptr, g_max0_ptr,
    T, C, BLOCK: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = c < C
    row = b * C + c
    w = tl.load(w_ptr + c, mask=mask, other=0.0)
    u = tl.load(u_ptr + c, mask=mask, other=0.0)
    # gradients reaching the final state (num, den, max)
    ga = tl.load(g_num_ptr + row, mask=mask, other=0.0)
    gb = tl.load(g_den_ptr + row, mask=mask, other=0.0)
    num_next = tl.load(num_end_ptr + row, mask=mask, other=0.0)
    den_next = tl.load(den_end_ptr + row, mask=mask, other=0.0)
    mx_next = tl.load(max_end_ptr + row, mask=mask, other=0.0)
    # what is left of max's gradient once num and den (num = S e^-max) have taken their share
    gp = tl.load(g_max_ptr + row, mask=mask, other=0.0) - ga * num_next - gb * den_next
    gw = tl.zeros([BLOCK], dtype=tl.float32)
    gu = tl.zeros([BLOCK], dtype=tl.float32)
    seq = b * T * C + c
    plane = T * C * tl.num_programs(0).to(tl.int64)
    num = num_next  # T >= 1: the loop leaves the state before token 0 here
    den = den_next
    for i in range(T):
        at = seq + (T - 1 - i) * C
        num = tl.load(saved_ptr + at, mask=mask, other=0.0)
        den = tl.load(saved_ptr + plane + at, mask=mask, other=0.0)
        mx = tl.load(saved_ptr + 2 * plane + at, mask=mask, other=0.0)
        k = tl.load(k_ptr + at, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + at, mask=mask, other=0.0).to(tl.float32)
        gy = tl.load(gy_ptr + at, mask=mask, other=0.0).to(tl.float32)
        # the output, recomputed: o = (e_state num + e_cur v) / D, D = e_state den + e_cur
        m = tl.maximum(mx, u + k)
        e_state = tl.exp(mx - m)
        e_cur = tl.exp(u + k - m)
        inv_d = 1.0 / (e_state * den + e_cur)
        out = (e_state * num + e_cur * v) * inv_d
        g_cur = gy * e_cur * inv_d  # through the current token's term (v directly, k and u via e^(u+k))
        gk = g_cur * (v - out)
        gv = g_cur
        gu += gk
        # through the state update: next = e^(mx + w - mx_next) * this + e^(k - mx_next) * (v, 1)
        f_state = tl.exp(mx + w - mx_next)
        f_cur = tl.exp(k - mx_next)
        gv += ga * f_cur
        gk += f_cur * (ga * v + gb)
        gw += f_state * (ga * num + gb * den)
        # the chain of maxima: mx_next = max(mx + w, k)
        from_state = mx + w >= k
        gw += tl.where(from_state, gp, 0.0)
        gk += tl.where(from_state, 0.0, gp)
        gp = tl.where(from_state, gp, 0.0)
        # gradients of this token's (num, den)
        g_here = gy * e_state * inv_d
        ga = g_here + f_state * ga
        gb = -g_here * out + f_state * gb
        tl.store(gk_ptr + at, gk.to(gk_ptr.dtype.element_ty), mask=mask)
        tl.store(gv_ptr + at, gv.to(gv_ptr.dtype.element_ty), mask=mask)
        mx_next = mx
    tl.store(gw_ptr + row, gw, mask=mask)
    tl.store(gu_ptr + row, gu, mask=mask)
    tl.store(g_num0_ptr + row, ga, mask=mask)
    tl.store(g_den0_ptr + row, gb, mask=mask)
    tl.store(g_max0_ptr + row, ga * num + gb * den + gp, mask=mask)


def _forward(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState, save: bool
) -> tuple[Tensor, WKVState, Tensor | None]:
    B, T, C = k.shape
    out = torch.empty_like(k)
    num, den, mx = (s.float().contiguous() for s in state)
    new = tuple(torch.empty(B, C, device=k.device, dtype=torch.float32) for _ in range(3))
    saved = torch.empty(3, B, T, C, device=k.device, dtype=torch.float32) if save else None
    grid = (B, triton.cdiv(C, BLOCK_C))
    _wkv4_fwd_kernel[grid](
        w, u, k, v, num, den, mx, out, *new, out if saved is None else saved,
        T, C, SAVE=save, BLOCK=BLOCK_C, EMPTY=EMPTY_MAX, num_warps=1,
    )  # fmt: skip
    return out, new, saved  # type: ignore[return-value]


class _WKV4Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: Tensor, u: Tensor, k: Tensor, v: Tensor, num: Tensor, den: Tensor, mx: Tensor):
        save = any(ctx.needs_input_grad)
        out, new, saved = _forward(w, u, k, v, (num, den, mx), save)
        if save:
            ctx.save_for_backward(w, u, k, v, saved, *new)
        ctx.state_dtypes = (num.dtype, den.dtype, mx.dtype)
        return out, *new

    @staticmethod
    def backward(
        ctx: Any, g_out: Tensor | None, g_num: Tensor | None, g_den: Tensor | None, g_max: Tensor | None
    ):
        w, u, k, v, saved, num_end, den_end, max_end = ctx.saved_tensors
        B, T, C = k.shape
        zeros = torch.zeros(B, C, device=k.device, dtype=torch.float32)
        gy = torch.zeros_like(k) if g_out is None else g_out.contiguous()
        g_state = [zeros if g is None else g.float().contiguous() for g in (g_num, g_den, g_max)]
        gk, gv = torch.empty_like(k), torch.empty_like(v)
        gw, gu, g_num0, g_den0, g_max0 = (torch.empty_like(zeros) for _ in range(5))
        grid = (B, triton.cdiv(C, BLOCK_C))
        _wkv4_bwd_kernel[grid](
            w, u, k, v, saved, num_end, den_end, max_end, gy, *g_state,
            gk, gv, gw, gu, g_num0, g_den0, g_max0, T, C, BLOCK=BLOCK_C, num_warps=1,
        )  # fmt: skip
        g0 = (g.to(dt) for g, dt in zip((g_num0, g_den0, g_max0), ctx.state_dtypes, strict=True))
        return gw.sum(0), gu.sum(0), gk, gv, *g0


def _prepare(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # w = -inf (time_decay overflowed exp) would give 0 * inf in the backward: clamp as the chunked form does
    return (
        w.float().clamp(min=_MOST_NEGATIVE_DECAY).contiguous(),
        u.float().contiguous(),
        k.contiguous(),
        v.contiguous(),
    )


def wkv4_triton(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState, chunk_len: int = 0
) -> tuple[Tensor, WKVState]:
    """The T-token form (prefill and training), differentiable in every input. ``chunk_len`` is
    accepted for the dispatch signature and unused: the kernel has no chunks."""
    w, u, k, v = _prepare(w, u, k, v)
    out, num, den, mx = _WKV4Function.apply(w, u, k, v, *state)
    return out, (num, den, mx)


def wkv4_triton_step(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState) -> tuple[Tensor, WKVState]:
    """One token, k and v (B, C): the decode step. Under autograd it is the PyTorch step."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (w, u, k, v, *state)):
        return wkv4_step(w, u, k, v, state)
    w, u, k, v = _prepare(w, u, k, v)
    out, new, _ = _forward(w, u, k[:, None], v[:, None], state, save=False)
    return out[:, 0], new


def load_backend() -> Backend | None:
    """The backend the wkv4 registry loads on the first CUDA call (None: no usable GPU)."""
    if not torch.cuda.is_available():
        return None
    return Backend("triton", step=wkv4_triton_step, sequence=wkv4_triton)
