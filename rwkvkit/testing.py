"""Random RWKV checkpoints with realistic value ranges, for tests and benchmarks.

Real checkpoints cannot be downloaded here, so differential tests run on these: any two
implementations that agree on random weights in the trained models' value ranges agree on
the computation, not just on one lucky model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .models.rwkv4 import RWKV4, RWKV4Config


def random_rwkv4_state_dict(config: RWKV4Config, seed: int = 0) -> dict[str, Tensor]:
    """A BlinkDL-named RWKV-4 state dict of float32 tensors drawn from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in RWKV4(config).state_dict().items()}
    sd = {}
    for name, shape in shapes.items():
        if name.endswith("time_decay"):
            t = torch.rand(shape, generator=gen) * 6 - 4  # per-step decay e^-e^td from ~1 - 0.02 to ~0
        elif name.endswith("time_first"):
            t = torch.randn(shape, generator=gen)
        elif ".time_mix_" in name:
            t = torch.rand(shape, generator=gen)
        elif name.endswith(".bias"):
            t = torch.randn(shape, generator=gen) * 0.1
        elif ".ln" in name or name.startswith("ln_out"):
            t = 1 + torch.randn(shape, generator=gen) * 0.1
        elif name == "emb.weight":
            t = torch.randn(shape, generator=gen)
        else:  # linear layers (out, in)
            t = torch.randn(shape, generator=gen) / shape[1] ** 0.5
        sd[name] = t.float()
    return sd


def random_rwkv4(config: RWKV4Config, seed: int = 0) -> RWKV4:
    """An RWKV4 model holding :func:`random_rwkv4_state_dict` weights."""
    model = RWKV4(config)
    model.load_state_dict(random_rwkv4_state_dict(config, seed))
    return model.eval()
