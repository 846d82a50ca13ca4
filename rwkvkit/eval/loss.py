"""The one loss routine: log-probabilities of each next token, read in calls of bounded length.

The evaluator's scorer and the trainer's validation loss both use it, so "the loss" is computed
one way everywhere: a window of ids (B, L) is fed in calls of ``tokens_per_call`` tokens, the
model's state carried from call to call (the trainer's truncated-BPTT segments, the scorer's
bounded chunks), and the output after ``ids[:, k]`` is scored against ``ids[:, k + 1]``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn


@torch.no_grad()
def next_token_logprobs(
    model: nn.Module,
    ids: Tensor,
    tokens_per_call: int,
    *,
    state: Any = None,
    carry_state: bool = True,
    autocast: Callable[[], Any] = nullcontext,
    on_call: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, Tensor, Any]:
    """log P(ids[:, k + 1] | what came before) and whether it is the argmax, for k in 0 .. L - 2.

    ids: (B, L) on the model's device; ``state`` is where reading starts (None: fresh). With
    ``carry_state`` False every call starts afresh (a fixed-context model reading one window
    per call). ``on_call(s, e)`` is told after positions s .. e - 1 are scored.
    Returns log-probabilities (B, L - 1) float64 and greedy flags (B, L - 1) bool, on the CPU,
    and the state after ``ids[:, : L - 1]``.
    """
    B, L = ids.shape
    lp = torch.zeros(B, max(L - 1, 0), dtype=torch.float64)
    greedy = torch.zeros(B, max(L - 1, 0), dtype=torch.bool)
    for s in range(0, L - 1, tokens_per_call):
        e = min(s + tokens_per_call, L - 1)  # inputs s .. e - 1 predict tokens s + 1 .. e
        with autocast():
            logits, state = model(ids[:, s:e], state)
        target = ids[:, s + 1 : e + 1]
        logits = logits.float()
        lp[:, s:e] = (logits.gather(-1, target[..., None])[..., 0] - logits.logsumexp(-1)).double().cpu()
        greedy[:, s:e] = (logits.argmax(-1) == target).cpu()
        if on_call is not None:
            on_call(s, e)
        if not carry_state:
            state = None
    return lp, greedy, state
