"""The architecture registry: the GPT baseline's size matches RWKV-4's; unknown names are refused."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.errors import RwkvkitError
from rwkvkit.train.arch import ARCHITECTURES, build
from rwkvkit.train.config import TrainConfig


@pytest.mark.parametrize(("L", "C", "ctx"), [(4, 256, 256), (2, 32, 32), (12, 768, 1024), (6, 512, 4096)])
def test_gpt_parameter_count_within_5_percent(L: int, C: int, ctx: int) -> None:
    counts = {}
    for arch in ("rwkv4", "gpt"):
        cfg = TrainConfig(
            data="", out="", arch=arch, n_layer=L, n_embd=C, n_head=max(1, C // 64), ctx_len=ctx
        )
        with torch.device("meta"):
            model, _ = build(cfg, 256)
        counts[arch] = sum(p.numel() for p in model.parameters())
    assert abs(counts["gpt"] / counts["rwkv4"] - 1) < 0.05, counts


def test_every_architecture_builds_and_unknown_ones_are_refused() -> None:
    for name in ARCHITECTURES:
        cfg = TrainConfig(data="", out="", arch=name, n_layer=1, n_embd=64, n_head=2, head_size=32, ctx_len=8)
        model, model_config = build(cfg, 256)
        logits, _ = model(torch.zeros(1, 3, dtype=torch.long))
        assert logits.shape == (1, 3, 256) and "chunk_len" not in model_config
    with pytest.raises(RwkvkitError, match="--arch must be one of rwkv4, rwkv7, gpt"):
        build(TrainConfig(data="", out="", arch="mamba"), 256)
