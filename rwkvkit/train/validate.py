"""The validation loss a training run logs: fixed windows of the validation split, read like
training windows (truncated-BPTT segments, state carried) by the evaluator's loss routine."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import RwkvkitError
from ..eval.loss import next_token_logprobs
from .config import TrainConfig
from .data import TokenData, TokenSampler, eval_windows


def validation_loss(
    model: nn.Module, data: TokenData, cfg: TrainConfig, device: torch.device, amp: Any
) -> float:
    """Mean validation loss (nats per token) over ``cfg.eval_windows`` fixed windows."""
    if len(data.val) < cfg.ctx_len + 2:
        raise RwkvkitError("the validation split is shorter than --ctx-len + 2 tokens")
    was_training = model.training
    model.eval()
    starts = eval_windows(data.val, cfg.ctx_len, cfg.eval_windows)
    sampler = TokenSampler(data.val, cfg.ctx_len, 0)
    total, count = 0.0, 0
    for i in range(0, len(starts), cfg.batch_size):
        x, y = sampler.read(starts[i : i + cfg.batch_size])
        ids = torch.cat([x, y[:, -1:]], 1).to(device)  # the window: ctx_len + 1 tokens
        lp, _, _ = next_token_logprobs(model, ids, cfg.segment, autocast=amp)
        total -= float(lp.sum())
        count += lp.numel()
    model.train(was_training)
    return total / count
