"""RWKV-4 WKV: the decayed, bonus-weighted average of past values, per channel.

For one channel, with per-step log-decay ``w < 0`` (``w = -exp(time_decay)``) and bonus ``u``
(``time_first``), the output at step t is

    wkv_t = (S_t + e^(u + k_t) v_t) / (Z_t + e^(u + k_t))
    S_t   = sum_{i<t} e^((t-1-i) w + k_i) v_i        Z_t = sum_{i<t} e^((t-1-i) w + k_i)

and S, Z obey S_{t+1} = e^w S_t + e^(k_t) v_t. The exponents can be huge either way, so the state
is kept as ``(num, den, max)`` with ``S = num * e^max`` and ``Z = den * e^max``, where ``max`` is the
largest exponent seen so far (so ``den >= 1`` once anything was added). Initial state:
``num = den = 0``, ``max = -1e38``.

Three forms, all computing the same numbers in float32:
- :func:`wkv4_reference`: the plain loop over time, the readable definition;
- :func:`wkv4_step`: one token, the recurrent mode's hot path;
- :func:`wkv4_chunked`: the parallel mode; per chunk of L tokens the L x L exponent matrix is
  built at once and normalised by its row maximum, so it is stable for any decay and length.
"""

from __future__ import annotations

import torch
from torch import Tensor

WKVState = tuple[Tensor, Tensor, Tensor]  # (num, den, max), each (B, C) float32

# Stands in for -inf as the running maximum of an empty sum: finite, so max - max never gives NaN.
EMPTY_MAX = -1e38
# The chunked form multiplies w by step counts; a w of -inf (time_decay overflowed exp) would give
# 0 * -inf = NaN, so it is clamped to a value that is just as decisive for exp().
_MOST_NEGATIVE_DECAY = -1e30


def initial_wkv_state(batch: int, channels: int, device: torch.device | str = "cpu") -> WKVState:
    """The empty state: nothing accumulated yet."""
    zeros = torch.zeros(batch, channels, device=device, dtype=torch.float32)
    return zeros, zeros.clone(), torch.full_like(zeros, EMPTY_MAX)


def wkv4_step(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState) -> tuple[Tensor, WKVState]:
    """One token. w, u: (C,); k, v: (B, C) float32; state: 3 x (B, C). Returns (B, C), new state."""
    num, den, mx = state
    # Output: the stored sum plus the current token with its bonus u.
    bonus = u + k
    m = torch.maximum(mx, bonus)
    e_state, e_cur = torch.exp(mx - m), torch.exp(bonus - m)
    out = (e_state * num + e_cur * v) / (e_state * den + e_cur)
    # State update: decay the stored sum by one step and add the current token (no bonus).
    decayed = mx + w
    m = torch.maximum(decayed, k)
    e_state, e_cur = torch.exp(decayed - m), torch.exp(k - m)
    return out, (e_state * num + e_cur * v, e_state * den + e_cur, m)


def wkv4_reference(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState) -> tuple[Tensor, WKVState]:
    """The definition, one step at a time. k, v: (B, T, C) float32. Returns (B, T, C), final state."""
    outs = []
    for t in range(k.shape[1]):
        out, state = wkv4_step(w, u, k[:, t], v[:, t], state)
        outs.append(out)
    return torch.stack(outs, dim=1), state


def wkv4_chunked(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState, chunk_len: int = 32
) -> tuple[Tensor, WKVState]:
    """Parallel form: a Python loop over chunks of ``chunk_len`` tokens, each computed at once.

    w, u: (C,); k, v: (B, T, C) float32; state: 3 x (B, C). Returns (B, T, C), final state.
    Work per chunk is O(L^2 C) elementwise, so total O(T L C): L trades Python overhead for flops.
    """
    B, T, C = k.shape
    w = w.clamp(min=_MOST_NEGATIVE_DECAY)
    L = min(chunk_len, T)
    # steps[j, i] = j - 1 - i: how many decay steps lie between token i and the output at j > i.
    pos = torch.arange(L, device=k.device)
    steps = (pos[:, None] - 1 - pos[None, :]).to(torch.float32)  # (L, L)
    below = pos[:, None] > pos[None, :]  # (L, L) i < j: past tokens
    diag = pos[:, None] == pos[None, :]  # (L, L) i == j: the current token, with bonus
    # 1. Exponent of token i's weight in output j, less k_i: (j-1-i) w below the diagonal, u on it
    #    (its k_i is k_j), -inf above it (the future). The same for every chunk, so built once.
    base = torch.where(below[..., None], steps[..., None] * w, float("-inf"))
    base = torch.where(diag[..., None], u, base)  # (L, L, C)
    num, den, mx = state
    outs = []
    for start in range(0, T, L):
        kc, vc = k[:, start : start + L], v[:, start : start + L]  # (B, n, C)
        n = kc.shape[1]
        expo = base[:n, :n] + kc[:, None, :, :]  # (B, n, n, C)
        # 2. The carried state reaches output j after j decay steps.
        carry = mx[:, None, :] + pos[:n, None] * w  # (B, n, C)
        # 3. Normalise each output row by its largest exponent, then sum.
        m = torch.maximum(expo.amax(dim=2), carry)  # (B, n, C)
        weights = torch.exp(expo - m[:, :, None, :])  # (B, n, n, C)
        e_carry = torch.exp(carry - m)  # (B, n, C)
        out_num = (weights * vc[:, None, :, :]).sum(dim=2) + e_carry * num[:, None, :]
        out_den = weights.sum(dim=2) + e_carry * den[:, None, :]
        outs.append(out_num / out_den)
        # 4. State after the chunk: every token decayed to the chunk's end, plus the old state.
        end_expo = (n - 1 - pos[:n, None]) * w + kc  # (B, n, C)
        end_carry = mx + n * w  # (B, C)
        new_mx = torch.maximum(end_expo.amax(dim=1), end_carry)
        e_tok = torch.exp(end_expo - new_mx[:, None, :])
        e_old = torch.exp(end_carry - new_mx)
        num = (e_tok * vc).sum(dim=1) + e_old * num
        den = e_tok.sum(dim=1) + e_old * den
        mx = new_mx
    return torch.cat(outs, dim=1), (num, den, mx)


def wkv4(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState, chunk_len: int = 32
) -> tuple[Tensor, WKVState]:
    """The one dispatch point: recurrent step for one token, chunked parallel form (matmul variant,
    with gradients: ops/wkv4_train.py) for more."""
    if k.shape[1] == 1:
        out, state = wkv4_step(w, u, k[:, 0], v[:, 0], state)
        return out[:, None], state
    from .wkv4_train import wkv4_chunked_matmul  # the same numbers, faster; falls back to wkv4_chunked

    return wkv4_chunked_matmul(w, u, k, v, state, chunk_len)
