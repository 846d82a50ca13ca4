"""The official RWKV-4 initialisation and the optimizer's parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from rwkvkit.train.arch import build
from rwkvkit.train.config import TrainConfig
from rwkvkit.train.init import param_groups


def test_official_init_formulas_and_param_groups() -> None:
    cfg = TrainConfig(data="", out="", n_layer=3, n_embd=16)
    torch.manual_seed(0)
    model, _ = build(cfg, 256)
    C = 16
    h = torch.arange(C, dtype=torch.float32)
    b0, b2 = model.blocks[0].att, model.blocks[2].att
    torch.testing.assert_close(b0.time_decay, -5 + 8 * (h / (C - 1)) ** 0.7)  # ratio_0_to_1 = 0
    torch.testing.assert_close(b2.time_decay, -5 + 8 * (h / (C - 1)) ** 2.0)  # ratio_0_to_1 = 1
    assert b0.time_first[0].item() == pytest.approx(math.log(0.3) + 0.0)  # zigzag: 0, 0.5, -0.5, ...
    assert b0.time_first[1].item() == pytest.approx(math.log(0.3) + 0.5)
    torch.testing.assert_close(b0.time_mix_k.flatten(), h / C)  # ratio_1_to_almost0 = 1 at layer 0
    torch.testing.assert_close(model.blocks[1].att.time_mix_v.flatten(), (h / C) ** (2 / 3) + 0.15)
    for name, p in model.named_parameters():
        if any(z in name for z in (".att.output.", ".ffn.value.", ".ffn.receptance.")):
            assert p.abs().max() == 0, name
    assert model.emb.weight.abs().max() <= 1e-4
    w = model.blocks[1].att.key.weight
    torch.testing.assert_close(w @ w.T, torch.eye(C), atol=1e-5, rtol=0)  # orthogonal
    groups = {g["name"]: g for g in param_groups(model, 0.1)}
    assert groups["time_decay"]["lr_scale"] == 2 and groups["time_first"]["lr_scale"] == 3
    assert all(p.squeeze().dim() >= 2 for p in groups["decay"]["params"])
    assert groups["no_decay"]["weight_decay"] == 0 and groups["decay"]["weight_decay"] == 0.1
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
