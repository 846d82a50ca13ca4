"""The learning-rate schedule: warmup, then cosine or exponential decay to lr_final."""

from __future__ import annotations

import math

import pytest

from rwkvkit.train.config import TrainConfig
from rwkvkit.train.schedule import learning_rate


def test_schedule() -> None:
    cfg = TrainConfig(data="", out="", lr=1e-3, lr_final=1e-4, warmup=10, steps=110)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4) and learning_rate(cfg, 9) == pytest.approx(1e-3)
    assert learning_rate(cfg, 10) == pytest.approx(1e-3) and learning_rate(cfg, 109) == pytest.approx(1e-4)
    assert learning_rate(cfg, 60) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=0.02)  # cosine midpoint
    cfg.decay = "exp"
    assert learning_rate(cfg, 60) == pytest.approx(math.sqrt(1e-3 * 1e-4), rel=0.05)
