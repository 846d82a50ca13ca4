"""RWKV-4 WKV: the decayed, bonus-weighted average of past values, per channel.

For one channel, with per-step log-decay ``w < 0`` (``w = -exp(time_decay)``) and bonus ``u``
(``time_first``), the output at step t is

    wkv_t = (S_t + e^(u + k_t) v_t) / (Z_t + e^(u + k_t))
    S_t   = sum_{i<t} e^((t-1-i) w + k_i) v_i        Z_t = sum_{i<t} e^((t-1-i) w + k_i)

and S, Z obey S_{t+1} = e^w S_t + e^(k_t) v_t. The exponents can be huge either way, so the state
is kept as ``(num, den, max)`` with ``S = num * e^max`` and ``Z = den * e^max``, where ``max`` is the
largest exponent seen so far (so ``den >= 1`` once anything was added). Initial state:
``num = den = 0``, ``max = -1e38``.

Four forms, all computing the same numbers in float32, and the one dispatch point :func:`wkv4`:
- :func:`wkv4_reference`: the plain loop over time, the readable definition;
- :func:`wkv4_step`: one token, the recurrent mode's hot path;
- :func:`wkv4_chunked`: a parallel form; per chunk of L tokens the L x L exponent matrix is
  built at once and normalised by its row maximum, so it is stable for any decay and length;
- :func:`wkv4_chunked_matmul`: the parallel form the model runs (prefill and training), the same
  sums rearranged into one batched matrix product per chunk (see its section below), falling back
  to :func:`wkv4_chunked` where float32 could lose a term.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .exp import exp
from .registry import Backend, BackendRegistry

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
    e_state, e_cur = exp(mx - m), exp(bonus - m)
    out = (e_state * num + e_cur * v) / (e_state * den + e_cur)
    # State update: decay the stored sum by one step and add the current token (no bonus).
    decayed = mx + w
    m = torch.maximum(decayed, k)
    e_state, e_cur = exp(decayed - m), exp(k - m)
    return out, (e_state * num + e_cur * v, e_state * den + e_cur, m)


def wkv4_reference(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState) -> tuple[Tensor, WKVState]:
    """The definition, one step at a time. k, v: (B, T, C) float32. Returns (B, T, C), final state."""
    outs = []
    for t in range(k.shape[1]):
        out, state = wkv4_step(w, u, k[:, t], v[:, t], state)
        outs.append(out)
    return torch.stack(outs, dim=1), state


def _state_at_chunk_end(end_expo: Tensor, end_carry: Tensor, v: Tensor, num: Tensor, den: Tensor) -> WKVState:
    """The state after a chunk, time on dimension 1 (either layout): every token's term decayed to
    the chunk's end (exponents ``end_expo``) plus the old state's (``end_carry``, its max moved on),
    renormalised by the new maximum."""
    new_mx = torch.maximum(end_expo.amax(dim=1), end_carry)
    e_tok = torch.exp(end_expo - new_mx[:, None, :])
    e_old = torch.exp(end_carry - new_mx)
    return (e_tok * v).sum(dim=1) + e_old * num, e_tok.sum(dim=1) + e_old * den, new_mx


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
        num, den, mx = _state_at_chunk_end(end_expo, mx + n * w, vc, num, den)
    return torch.cat(outs, dim=1), (num, den, mx)


# The matmul form (training and prefill).
#
# Same numbers as :func:`wkv4_chunked` (initial state in, final state out, so
# gradients flow across chunks and across calls), rearranged so that the O(L^2) part of each chunk
# is one batched matrix product per chunk instead of a (B, L, L, C) elementwise tensor:
#
#     S_j (within chunk) = sum_{i<j} e^((j-1-i) w) * e^(k_i - M) v_i * e^M
#
# with M the largest k in the chunk (per batch row and channel). ``D[c, j, i] = e^((j-1-i) w_c)``
# (i < j, else 0) is at most 1 and the same for every chunk and batch row, and ``e^(k_i - M) <= 1``,
# so nothing overflows. What can be lost is precision: a term with ``k_i < M - 80`` underflows to
# zero in float32 even where the decay has made the maximum's own term negligible. When some chunk's
# k values span more than ``SAFE_K_SPREAD`` nats we therefore use the row-max form of ``wkv4_chunked``
# instead (exact for any values, slower). Plain autograd gives the gradients: every step here is
# differentiable, and the normalisers that cancel out of the result (M and the per-row maximum) are
# detached so no work is spent on their zero gradients.
#
# Shapes: w, u (C,) float32 with w = -exp(time_decay) < 0; k, v (B, T, C) float32; state is
# (num, den, max), each (B, C). Returns (B, T, C) and the final state.

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
    """The model's parallel WKV (prefill and training): forward equals ``wkv4_reference``;
    differentiable in every input. Shapes as :func:`wkv4_chunked`."""
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
        num, den, mx = _state_at_chunk_end(end_expo, mx + n * w[:, None], vc, num, den)
    out = torch.cat(outs, dim=1).permute(2, 1, 0)  # (B, T, C)
    return out, (num.t(), den.t(), mx.t())


# The one place a WKV-4 implementation is chosen; a CUDA/Triton kernel registers here.
BACKENDS = BackendRegistry(
    "wkv4",
    Backend("torch", step=wkv4_step, sequence=wkv4_chunked_matmul),
    loaders={"cuda": ".triton_wkv4:load_backend"},
)


def wkv4(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKVState, chunk_len: int = 32
) -> tuple[Tensor, WKVState]:
    """The one dispatch point, for both modes: the backend's step for one token, its chunked form for more.

    w, u: (C,) float32; k, v: (B, T, C) float32, or (B, C) for one token (the decode step, which
    then returns (B, C)); state: 3 x (B, C). Returns the output and the final state.
    """
    backend = BACKENDS.lookup(k)
    if k.dim() == 2:
        return backend.step(w, u, k, v, state)
    if k.shape[1] == 1:
        out, state = backend.step(w, u, k[:, 0], v[:, 0], state)
        return out[:, None], state
    return backend.sequence(w, u, k, v, state, chunk_len)
