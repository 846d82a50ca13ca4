"""RWKV-4 WKV for training: the chunked parallel form with gradients, built on batched matmuls.

Same numbers as :func:`rwkvkit.ops.wkv4.wkv4_chunked` (initial state in, final state out, so
gradients flow across chunks and across calls), rearranged so that the O(L^2) part of each chunk
is one batched matrix product per chunk instead of a (B, L, L, C) elementwise tensor:

    S_j (within chunk) = sum_{i<j} e^((j-1-i) w) * e^(k_i - M) v_i * e^M

with M the largest k in the chunk (per batch row and channel). ``D[c, j, i] = e^((j-1-i) w_c)``
(i < j, else 0) is at most 1 and the same for every chunk and batch row, and ``e^(k_i - M) <= 1``,
so nothing overflows. What can be lost is precision: a term with ``k_i < M - 80`` underflows to
zero in float32 even where the decay has made the maximum's own term negligible. When some chunk's
k values span more than ``SAFE_K_SPREAD`` nats we therefore use the row-max form of ``wkv4_chunked``
instead (exact for any values, slower). Plain autograd gives the gradients: every step here is
differentiable, and the normalisers that cancel out of the result (M and the per-row maximum) are
detached so no work is spent on their zero gradients.

Shapes: w, u (C,) float32 with w = -exp(time_decay) < 0; k, v (B, T, C) float32; state is
(num, den, max), each (B, C). Returns (B, T, C) and the final state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .wkv4 import _MOST_NEGATIVE_DECAY, WKVState, wkv4_chunked

# k values within one chunk may span this many nats before the matmul form could lose a term to
# float32 underflow (e^-80 ~ 1.8e-35 is still a normal float32; e^-87 is not).
SAFE_K_SPREAD = 80.0


def decay_matrix(w: Tensor, n: int) -> Tensor:
    """D[c, j, i] = e^((j-1-i) w_c) for i < j, else 0. (C, n, n)"""
    pos = torch.arange(n, device=w.device)
    steps = (pos[:, None] - 1 - pos[None, :]).clamp(min=0).to(w.dtype)  # clamp: no e^(+big) above
    below = pos[:, None] > pos[None, :]
    return torch.where(below, torch.exp(steps * w[:, None, None]), 0.0)


def wkv4_chunked_matmul(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState, chunk_len: int = 32
) -> tuple[Tensor, WKVState]:
    """The training WKV: forward equals ``wkv4_reference``; differentiable in every input."""
    # the inputs' precision (float32 in the model), also inside a bf16 autocast region
    with torch.autocast(device_type=k.device.type, enabled=False):
        return _wkv4_chunked_matmul(w, u, k, v, state, chunk_len)


def _wkv4_chunked_matmul(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState, chunk_len: int
) -> tuple[Tensor, WKVState]:
    B, T, C = k.shape
    w = w.clamp(min=_MOST_NEGATIVE_DECAY)
    L = min(chunk_len, T)
    with torch.no_grad():  # fall back where k's spread inside a chunk could underflow
        pad = (-T) % L
        kk = torch.nn.functional.pad(k, (0, 0, 0, pad), value=float("nan")).view(B, -1, L, C)
        spread = (kk.nan_to_num(float("-inf")).amax(2) - kk.nan_to_num(float("inf")).amin(2)).max()
    if spread > SAFE_K_SPREAD:
        return wkv4_chunked(w, u, k, v, state, chunk_len)
    # Channels first, batch last: (C, T, B), so each chunk's product is one contiguous bmm.
    kt, vt = k.permute(2, 1, 0).contiguous(), v.permute(2, 1, 0).contiguous()
    wc, uc = w[:, None, None], u[:, None, None]  # (C, 1, 1)
    num, den, mx = (s.t() for s in state)  # (C, B)
    pos = torch.arange(L, device=k.device, dtype=k.dtype)[None, :, None]  # (1, L, 1)
    D_full = decay_matrix(w, L)  # (C, L, L)
    outs = []
    # split, not slicing in the loop: its backward is one cat, not a zero-filled (C, T, B) per chunk
    for kc, vc in zip(kt.split(L, dim=1), vt.split(L, dim=1), strict=True):  # (C, n, B) each
        n = kc.shape[1]
        D = D_full if n == L else D_full[:, :n, :n].contiguous()
        p = pos[:, :n]
        # 1. Past tokens inside the chunk, scaled by e^-M: one (C, n, n) @ (C, n, 2B) product.
        M = kc.detach().amax(dim=1, keepdim=True)  # (C, 1, B)
        a_den = torch.exp(kc - M)  # (C, n, B)
        inner = torch.bmm(D, torch.cat([a_den * vc, a_den], dim=2))  # (C, n, 2B)
        inner_num, inner_den = inner[..., :B], inner[..., B:]
        # 2. The carried state reaches output j after j decay steps; the current token gets u.
        carry = mx[:, None, :] + p * wc  # (C, n, B)
        bonus = uc + kc  # (C, n, B)
        # Row 0 has no past token inside the chunk, so M bounds nothing there: leaving it in the
        # maximum could underflow every real term of that row (0 / 0) when the carry and the bonus
        # are far below the chunk's largest k. For rows j >= 1 the term of token j-1 (decay 1) is
        # within SAFE_K_SPREAD of M, so some term always survives.
        M_rows = torch.where(p == 0, float("-inf"), M)  # (C, n, B)
        m = torch.maximum(torch.maximum(M_rows, carry), bonus).detach()  # cancels out of num / den
        # row 0's inner sum is exactly 0, so its factor only has to stay finite: clamp at e^0
        e_in = torch.exp((M - m).clamp(max=0.0))
        e_carry, e_bonus = torch.exp(carry - m), torch.exp(bonus - m)
        out_num = e_in * inner_num + e_carry * num[:, None, :] + e_bonus * vc
        out_den = e_in * inner_den + e_carry * den[:, None, :] + e_bonus
        outs.append(out_num / out_den)
        # 3. State after the chunk: every token decayed to the chunk's end, plus the old state.
        end_expo = (n - 1 - p) * wc + kc  # (C, n, B)
        end_carry = mx + n * w[:, None]  # (C, B)
        new_mx = torch.maximum(end_expo.amax(dim=1), end_carry)
        e_tok = torch.exp(end_expo - new_mx[:, None, :])
        e_old = torch.exp(end_carry - new_mx)
        num = (e_tok * vc).sum(dim=1) + e_old * num
        den = e_tok.sum(dim=1) + e_old * den
        mx = new_mx
    out = torch.cat(outs, dim=1).permute(2, 1, 0)  # (B, T, C)
    return out, (num.t(), den.t(), mx.t())
