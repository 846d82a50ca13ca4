"""RWKV-5/6 WKV: linear attention with a per-channel decay and a bonus for the current token.

Per head, with state ``S`` (N x N, rows indexed by key channel and columns by value channel, the
official layout) and for every token the vectors r, w, k, v (all N) and a fixed bonus u (N):

    y_t = r_t^T (S_{t-1} + diag(u) k_t v_t^T)         S_t = diag(w_t) S_{t-1} + k_t v_t^T

RWKV-5 has a static w (per head in 5.0/5.1, per channel in 5.2); RWKV-6 computes w from each
token. ``w`` is passed as its logarithm (``log_w <= 0``), which can be very negative: trained
RWKV-5/6 channels forget nearly everything each token (w = e^-100 and below).

Three forms, computing the same numbers in float32, and the one dispatch point :func:`wkv5`:
- :func:`wkv5_reference`: the loop over tokens, the readable definition;
- :func:`wkv5_step`: one token, the recurrent mode;
- :func:`wkv5_chunked`: the parallel mode. With cumulative log-decay ``g_t = sum_{j<=t} log w_j``
  inside a chunk starting from state ``S_0``:

      y_t = (r_t e^{g_{t-1}})^T S_0 + sum_{i<t} [sum_c r_t k_i e^{g_{t-1} - g_i}] v_i + (r_t . u k_t) v_t
      S_L = e^{g_L} S_0 + sum_i (k_i e^{g_L - g_i}) v_i^T

  The cumulative sums are kept in float64 so that a channel that has lost e^-1000 and then a
  slowly decaying one keep their small differences exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .decay import MAX_FACTORISED_SPAN, chunk_span, decayed_scores
from .exp import exp
from .registry import Backend, BackendRegistry

# log w below this is w = 0 to float32 (e^-1e4); clamping keeps -inf (exp of a huge time_decay)
# from turning cumulative sums into inf - inf = NaN.
MIN_LOG_DECAY = -1e4


def wkv5_step(
    r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, u: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One token. r, log_w, k, v: (B, H, N) float32; u (H, N); state (B, H, N, N) [key, value].
    Returns y (B, H, N) and the new state (a new tensor: the given one is not changed)."""
    kv = k[..., :, None] * v[..., None, :]  # (B, H, N, N)
    y = (r[..., None, :] @ (state + u[..., :, None] * kv))[..., 0, :]
    return y, kv + exp(log_w)[..., :, None] * state


def wkv5_reference(
    r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, u: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """The definition, token by token. r, log_w, k, v: (B, T, H, N) float32; u (H, N); state
    (B, H, N, N). Returns y (B, T, H, N) and the final state."""
    ys = []
    for t in range(r.shape[1]):
        y, state = wkv5_step(r[:, t], log_w[:, t], k[:, t], v[:, t], u, state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def wkv5_chunked(
    r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, u: Tensor, state: Tensor, chunk_len: int = 32
) -> tuple[Tensor, Tensor]:
    """Parallel form: a loop over chunks of ``chunk_len`` tokens, each computed at once.

    r, log_w, k, v: (B, T, H, N) float32; u (H, N); state (B, H, N, N) [key, value].
    Returns y (B, T, H, N) and the final state.
    """
    B, T, H, N = r.shape
    r, k, v, log_w = (t.transpose(1, 2) for t in (r, k, v, log_w))  # (B, H, T, N)
    ys = []
    for start in range(0, T, chunk_len):
        sl = slice(start, start + chunk_len)
        rc, kc, vc = r[:, :, sl], k[:, :, sl], v[:, :, sl]
        lw = log_w[:, :, sl].clamp(min=MIN_LOG_DECAY).double()  # per chunk: no float64 copy of all T
        # 1. Cumulative log-decay: g after each token, g_prev before it (float64).
        g = torch.cumsum(lw, dim=2)  # (B, H, L, N)
        g_prev = g - lw
        g_end = g[:, :, -1:]
        fact = bool(chunk_span(g, g_prev) <= MAX_FACTORISED_SPAN)
        # 2. Scores of each output against the chunk's earlier tokens, and the bonus on the diagonal.
        scores = decayed_scores(rc, kc, g_prev, g, strict=True, factorise=fact)  # (B, H, L, L)
        bonus = (rc * u[:, None, :] * kc).sum(-1, keepdim=True)  # (B, H, L, 1)
        # 3. Outputs: the carried state decayed to just before t, the chunk's past, the bonus.
        carried = (rc * torch.exp(g_prev).to(rc.dtype)) @ state
        ys.append(carried + scores @ vc + bonus * vc)
        # 4. State after the chunk.
        to_end = torch.exp(g_end - g).to(rc.dtype)  # (B, H, L, N), <= 1
        state = torch.exp(g_end).to(rc.dtype).transpose(-1, -2) * state + (kc * to_end).transpose(-1, -2) @ vc
    return torch.cat(ys, dim=2).transpose(1, 2), state


# The one place a WKV-5/6 implementation is chosen; a CUDA/Triton kernel registers here.
BACKENDS = BackendRegistry(
    "wkv5",
    Backend("torch", step=wkv5_step, sequence=wkv5_chunked),
    loaders={"cuda": ".fla_kernels:load_wkv5_backend"},
)


def wkv5(
    r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, u: Tensor, state: Tensor, chunk_len: int = 32
) -> tuple[Tensor, Tensor]:
    """The one dispatch point, for both modes: the backend's step for one token, its chunked form for more.

    r, log_w, k, v: (B, T, H, N) float32, or (B, H, N) for one token (the decode step, which then
    returns y as (B, H, N)); u (H, N); state (B, H, N, N). Returns y and the final state.
    """
    backend = BACKENDS.lookup(r)
    if r.dim() == 3:
        return backend.step(r, log_w, k, v, u, state)
    if r.shape[1] == 1:
        y, state = backend.step(r[:, 0], log_w[:, 0], k[:, 0], v[:, 0], u, state)
        return y[:, None], state
    return backend.sequence(r, log_w, k, v, u, state, chunk_len)
