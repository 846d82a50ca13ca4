"""The learning-rate schedule: linear warmup, then cosine or exponential decay to ``lr_final``."""

from __future__ import annotations

import math

from .config import TrainConfig


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warmup from 0, then cosine or exponential decay from lr to lr_final at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup - 1)
    progress = min(1.0, progress)
    if cfg.decay == "exp":
        return cfg.lr * (cfg.lr_final / cfg.lr) ** progress
    return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * progress))
