"""Decay-weighted pair scores: the one piece of arithmetic every chunked matrix-state WKV needs.

Within a chunk, token i reaches position t through the per-channel decays between them, so the
chunked forms need ``A[t, i] = sum_c x[t, c] y[i, c] exp(gx[t, c] - gy[i, c])`` for the allowed
pairs (i < t or i <= t), where ``g`` are cumulative log-decays (non-increasing along the chunk).

Two ways to compute it, chosen per chunk:
- factorised: ``(x e^(gx - m)) @ (y e^(m - gy))^T`` with m the chunk's middle: one matrix product,
  fast, and exact while the chunk's total log-decay (its "span") is small enough that neither factor
  leaves float32's range; every product of factors is the true weight to rounding;
- pairwise: ``exp(gx_t - gy_i)`` formed for every pair, each factor <= 1, so it holds for any decay
  (an RWKV-5/6 channel can lose e^-100 per token) at O(L^2 N) elementwise cost.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Largest chunk span (nats of decay) for the factorised form: factors stay within e^+-(SPAN/2) = e^20,
# far from float32's e^88 limit even after multiplying by large keys.
MAX_FACTORISED_SPAN = 40.0


def chunk_span(g: Tensor, g_prev: Tensor) -> Tensor:
    """Largest log-decay any channel accumulates across the chunk: g_prev at its start minus g at its end."""
    return (g_prev[..., :1, :] - g[..., -1:, :]).amax()


def decayed_scores(x: Tensor, y: Tensor, gx: Tensor, gy: Tensor, *, strict: bool, factorise: bool) -> Tensor:
    """Scores of every query row against every key row of one chunk.

    x, gx: (..., L, N); y, gy: (..., L, N). The g tensors may be float64 (differences are taken
    before rounding, so long cumulative sums lose nothing). Pairs with i > t (or i >= t when
    ``strict``) are 0. Returns (..., L, L) in x's dtype, row t, column i.
    """
    L = x.shape[-2]
    pos = torch.arange(L, device=x.device)
    allowed = pos[:, None] > pos[None, :] if strict else pos[:, None] >= pos[None, :]  # (L, L)
    if factorise:
        mid = gy[..., L // 2 : L // 2 + 1, :]  # (..., 1, N)
        xs = x * torch.exp((gx - mid).to(x.dtype))
        ys = y * torch.exp((mid - gy).to(x.dtype))
        return (xs @ ys.transpose(-1, -2)).masked_fill(~allowed, 0.0)
    diff = gx[..., :, None, :] - gy[..., None, :, :]  # (..., L, L, N), <= 0 where allowed
    diff = torch.where(allowed[:, :, None], diff, torch.full_like(diff, float("-inf")))
    return (x[..., :, None, :] * torch.exp(diff.to(x.dtype)) * y[..., None, :, :]).sum(-1)
