"""RWKV-7 WKV: the generalised delta rule on a matrix-valued state per head.

Per head, with state ``S`` (N x N, rows are value channels, columns key channels, the official
layout) and for every token the vectors r, w, k, v, alpha, beta (all N):

    S_t = S_{t-1} (diag(w_t) + alpha_t beta_t^T) + v_t k_t^T        y_t = S_t r_t

RWKV-7 uses ``alpha = -kk`` and ``beta = kk * a`` (kk the normalised key, a the in-context learning
rate), so ``S alpha beta^T`` removes part of what the state holds along kk before writing the new
value. ``w`` is passed as its logarithm (``log_w <= 0``).

Three forms, computing the same numbers in float32, and the one dispatch point :func:`wkv7`:
- :func:`wkv7_reference`: the loop over tokens, the readable definition (and its autograd);
- :func:`wkv7_step`: one token, the recurrent mode;
- :func:`wkv7_chunked`: the parallel mode. Within a chunk the only nonlinear coupling is through
  ``u_t = S_{t-1} alpha_t``. Unrolling the recurrence from the chunk's initial state ``S_0`` with
  cumulative log-decay ``g_t = sum_{j<=t} log w_j`` gives, for all t of the chunk at once,

      u_t = S_0 (alpha_t e^{g_{t-1}}) + sum_{i<t} [u_i (beta_i e^{g_{t-1}-g_i}).alpha_t + v_i (k_i e^{g_{t-1}-g_i}).alpha_t]

  a unit lower-triangular linear system for U (the "UT transform" of the WY representation),
  solved exactly with one triangular solve. Outputs and the final state are then sums of known
  terms. Every exponential is of a difference ``g_t - g_i <= 0``, so it holds for any decay.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .decay import MAX_FACTORISED_SPAN, chunk_span, decayed_scores
from .exp import exp
from .registry import Backend, BackendRegistry

# Every RWKV-7 decay is >= e^-0.61 per token (models/rwkv7.py), so a chunk of this many tokens or fewer
# never exceeds the factorised form's span.
_ALWAYS_FACTORISED_LEN = int(MAX_FACTORISED_SPAN / 0.6066)


def wkv7_step(
    r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One token. r, log_w, k, v, alpha, beta: (B, H, N) float32; state (B, H, N, N).
    Returns y (B, H, N) and the new state (a new tensor: the given one is not changed)."""
    w = exp(log_w)
    removed = state @ alpha[..., :, None]  # (B, H, N, 1): S alpha, what the delta rule takes away
    state = state * w[..., None, :] + removed * beta[..., None, :] + v[..., :, None] * k[..., None, :]
    return (state @ r[..., :, None])[..., 0], state


def wkv7_reference(
    r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """The definition, token by token. Inputs (B, T, H, N) float32; state (B, H, N, N).
    Returns y (B, T, H, N) and the final state."""
    ys = []
    for t in range(r.shape[1]):
        y, state = wkv7_step(r[:, t], log_w[:, t], k[:, t], v[:, t], alpha[:, t], beta[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def wkv7_chunked(
    r: Tensor,
    log_w: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Tensor,
    state: Tensor,
    chunk_len: int = 32,
) -> tuple[Tensor, Tensor]:
    """Parallel form: a loop over chunks of ``chunk_len`` tokens, each solved at once.

    Inputs (B, T, H, N) float32; state (B, H, N, N) [value, key]. Returns y (B, T, H, N) and the
    final state. Work per chunk is O(L^2 N + L N^2) per head, plus an L x L triangular solve.
    """
    B, T, H, N = r.shape
    # Heads next to batch: every tensor below is (B, H, L, N) per chunk.
    r, log_w, k, v, alpha, beta = (t.transpose(1, 2) for t in (r, log_w, k, v, alpha, beta))
    eye = torch.eye(min(chunk_len, T), device=r.device, dtype=r.dtype)
    ys = []
    for start in range(0, T, chunk_len):
        sl = slice(start, start + chunk_len)
        rc, kc, vc, ac, bc = r[:, :, sl], k[:, :, sl], v[:, :, sl], alpha[:, :, sl], beta[:, :, sl]
        L = rc.shape[2]
        # 1. Cumulative log-decay inside the chunk: g_t after token t, g_prev before it.
        g = torch.cumsum(log_w[:, :, sl], dim=2)  # (B, H, L, N)
        g_prev = g - log_w[:, :, sl]
        g_end = g[:, :, -1:]  # (B, H, 1, N)
        fact = L <= _ALWAYS_FACTORISED_LEN or bool(chunk_span(g, g_prev) <= MAX_FACTORISED_SPAN)
        # 2. How alpha_t sees the earlier tokens' writes (beta_i and k_i directions), strictly before t.
        a_beta = decayed_scores(ac, bc, g_prev, g, strict=True, factorise=fact)  # (B, H, L, L)
        a_key = decayed_scores(ac, kc, g_prev, g, strict=True, factorise=fact)
        # 3. Solve (I - a_beta) U = (alpha e^{g_prev}) S_0^T + a_key V for U = [S_{t-1} alpha_t]_t.
        rhs = (ac * torch.exp(g_prev)) @ state.transpose(-1, -2) + a_key @ vc  # (B, H, L, N)
        u = torch.linalg.solve_triangular(eye[:L, :L] - a_beta, rhs, upper=False, unitriangular=True)
        # 4. Outputs: the carried state decayed to t, plus every write up to and including t.
        r_beta = decayed_scores(rc, bc, g, g, strict=False, factorise=fact)
        r_key = decayed_scores(rc, kc, g, g, strict=False, factorise=fact)
        ys.append((rc * torch.exp(g)) @ state.transpose(-1, -2) + r_beta @ u + r_key @ vc)
        # 5. State after the chunk: the old one decayed through it, plus each write decayed to the end.
        to_end = torch.exp(g_end - g)  # (B, H, L, N), <= 1
        state = (
            state * torch.exp(g_end)  # (B, H, N, N) * (B, H, 1, N): decays the key columns
            + u.transpose(-1, -2) @ (bc * to_end)
            + vc.transpose(-1, -2) @ (kc * to_end)
        )
    return torch.cat(ys, dim=2).transpose(1, 2), state


# The one place a WKV-7 implementation is chosen; a CUDA/Triton kernel registers here.
BACKENDS = BackendRegistry(
    "wkv7",
    Backend("torch", step=wkv7_step, sequence=wkv7_chunked),
    loaders={"cuda": ".fla_kernels:load_wkv7_backend"},
)


def wkv7(
    r: Tensor,
    log_w: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    beta: Tensor,
    state: Tensor,
    chunk_len: int = 32,
) -> tuple[Tensor, Tensor]:
    """The one dispatch point, for both modes: the backend's step for one token, its chunked form for more.

    r, log_w, k, v, alpha, beta: (B, T, H, N) float32, or (B, H, N) for one token (the decode step,
    which then returns y as (B, H, N)); state (B, H, N, N). Returns y and the final state.
    """
    backend = BACKENDS.lookup(r)
    if r.dim() == 3:
        return backend.step(r, log_w, k, v, alpha, beta, state)
    if r.shape[1] == 1:
        y, state = backend.step(r[:, 0], log_w[:, 0], k[:, 0], v[:, 0], alpha[:, 0], beta[:, 0], state)
        return y[:, None], state
    return backend.sequence(r, log_w, k, v, alpha, beta, state, chunk_len)
