"""The validation loss a training run logs: fixed windows of the validation split, read like
training windows (truncated-BPTT segments, state carried) by the evaluator's loss routine; for
examples (chat, prompt/completion), fixed examples, counting only the tokens their masks count."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RwkvkitError
from ..eval.loss import next_token_logprobs
from .config import TrainConfig
from .data import TokenData, eval_windows


def validation_loss(
    model: nn.Module, data: TokenData, cfg: TrainConfig, device: torch.device, amp: Any
) -> float:
    """Mean validation loss (nats per counted token) over ``cfg.eval_windows`` fixed windows or examples."""
    if data.examples:
        sampler = data.sampler("val", cfg.ctx_len, 0)
        picks = (
            np.linspace(0, len(sampler) - 1, num=min(len(sampler), cfg.eval_windows)).round().astype(np.int64)
        )
    else:
        if len(data.val) < cfg.ctx_len + 2:
            raise RwkvkitError("the validation split is shorter than --ctx-len + 2 tokens")
        sampler = data.sampler("val", cfg.ctx_len, 0)
        picks = eval_windows(data.val, cfg.ctx_len, cfg.eval_windows)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    for i in range(0, len(picks), cfg.batch_size):
        x, y, *mask = sampler.read(picks[i : i + cfg.batch_size])
        ids = torch.cat([x, y[:, -1:]], 1).to(device)  # the window: inputs and the last target
        lp, _, _ = next_token_logprobs(model, ids, cfg.segment, autocast=amp)
        weight = mask[0].double() if mask else torch.ones_like(lp)
        total -= float((lp * weight).sum())
        count += float(weight.sum())
    model.train(was_training)
    return total / max(count, 1.0)
