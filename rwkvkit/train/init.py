"""The official RWKV-4 initialisation (BlinkDL's RWKV-LM, v4neo) and the optimizer's groups.

Time-mixing vectors depend on the layer's depth: early layers mix little of the previous token
and decay fast, deep layers the opposite. Matrices are orthogonal with a gain for tall shapes;
the output projections and the channel-mixing value/receptance start at zero, so every block
starts as the identity and the residual stream carries the embedding through.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models.rwkv4 import RWKV4

# Matrices that start at zero (each block's contribution to the residual stream starts at nothing).
ZERO_INIT = (".att.output.", ".ffn.value.", ".ffn.receptance.")


@torch.no_grad()
def init_rwkv4_(model: RWKV4) -> None:
    """Overwrite every parameter with the official RWKV-4 initial value."""
    cfg = model.config
    C, L = cfg.n_embd, cfg.n_layer
    ramp = torch.arange(C, dtype=torch.float32) / C  # 0, 1/C, ..., (C-1)/C
    for i, block in enumerate(model.blocks):
        ratio_0_to_1 = i / (L - 1) if L > 1 else 0.0
        ratio_1_to_almost0 = 1.0 - i / L
        att, ffn = block.att, block.ffn
        h = torch.arange(C, dtype=torch.float32)
        att.time_decay.copy_(-5 + 8 * (h / max(C - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1))
        zigzag = torch.tensor([(j + 1) % 3 - 1 for j in range(C)], dtype=torch.float32) * 0.5
        att.time_first.copy_(math.log(0.3) + zigzag)
        att.time_mix_k.copy_((ramp**ratio_1_to_almost0).view(1, 1, C))
        att.time_mix_v.copy_((ramp**ratio_1_to_almost0 + 0.3 * ratio_0_to_1).view(1, 1, C))
        att.time_mix_r.copy_((ramp ** (0.5 * ratio_1_to_almost0)).view(1, 1, C))
        ffn.time_mix_k.copy_((ramp**ratio_1_to_almost0).view(1, 1, C))
        ffn.time_mix_r.copy_((ramp**ratio_1_to_almost0).view(1, 1, C))
    for name, p in model.named_parameters():
        if ".ln" in name or name.startswith("ln_out") or ".time_" in name:
            if ".ln" in name or name.startswith("ln_out"):
                (nn.init.ones_ if name.endswith("weight") else nn.init.zeros_)(p)
            continue
        if name == "emb.weight":
            nn.init.uniform_(p, -1e-4, 1e-4)  # tiny: ln0 normalises it anyway
            continue
        rows, cols = p.shape
        gain = math.sqrt(rows / cols) if rows > cols else 1.0
        scale = 1.0
        if name == "head.weight":
            gain = math.sqrt(cfg.vocab_size / C) if cfg.vocab_size > C else 1.0
            scale = 0.5
        if any(z in name for z in ZERO_INIT):
            nn.init.zeros_(p)
        else:
            nn.init.orthogonal_(p, gain=gain * scale)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: 2x and 3x learning rate for time_decay and time_first (RWKV-7: 2x for the decay
    bias att.w0), as the official trainers do; weight decay on the layers' weight matrices only (never
    on 1-D vectors, biases, norms, mixes, nor RWKV-7's low-rank factors w1, a2, ...)."""
    groups: dict[str, dict] = {
        "decay": {"params": [], "weight_decay": weight_decay, "lr_scale": 1.0},
        "no_decay": {"params": [], "weight_decay": 0.0, "lr_scale": 1.0},
        "time_decay": {"params": [], "weight_decay": 0.0, "lr_scale": 2.0},
        "time_first": {"params": [], "weight_decay": 0.0, "lr_scale": 3.0},
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("time_decay") or name.endswith("att.w0"):
            groups["time_decay"]["params"].append(p)
        elif name.endswith("time_first"):
            groups["time_first"]["params"].append(p)
        elif p.squeeze().dim() >= 2 and name.endswith(
            ".weight"
        ):  # matrices; time_mix (1, 1, C) counts as 1-D, as officially
            groups["decay"]["params"].append(p)
        else:
            groups["no_decay"]["params"].append(p)
    return [dict(g, name=k) for k, g in groups.items() if g["params"]]
