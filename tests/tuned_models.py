"""Small random models of every RWKV version saved as BlinkDL .pth files, for the fine-tuning
tests (test_lora.py, test_time_state.py, test_train_finetune.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.testing import (
    random_rwkv4_state_dict,
    random_rwkv5_state_dict,
    random_rwkv6_state_dict,
    random_rwkv7_state_dict,
)

# Odd widths and heads that are not 64 wide catch transposed tensors; 5.2, 6 and 7 gate the output.
CONFIGS = {
    "4": RWKV4Config(vocab_size=97, n_layer=2, n_embd=40, ffn_dim=72, chunk_len=8),
    "5": RWKV5Config(vocab_size=97, n_layer=2, n_embd=48, ffn_dim=80, head_size=16, chunk_len=8),
    "6": RWKV6Config(
        vocab_size=97, n_layer=2, n_embd=64, ffn_dim=96, head_size=16, mix_lora=8, decay_lora=12, chunk_len=8
    ),
    "7": RWKV7Config(
        vocab_size=97, n_layer=2, n_embd=48, ffn_dim=80, head_size=16,
        decay_lora=8, iclr_lora=12, value_lora=4, gate_lora=20, chunk_len=8,
    ),
}  # fmt: skip
STATE_DICTS = {
    "4": random_rwkv4_state_dict,
    "5": random_rwkv5_state_dict,
    "6": random_rwkv6_state_dict,
    "7": random_rwkv7_state_dict,
}
VERSIONS = tuple(CONFIGS)


def save_random(version: str, path: Path, seed: int = 0, vocab_size: int | None = None) -> Path:
    """A random model of CONFIGS[version] (vocabulary ``vocab_size``: 256 runs with bytes) as .pth."""
    config = (
        CONFIGS[version]
        if vocab_size is None
        else dataclasses.replace(CONFIGS[version], vocab_size=vocab_size)
    )
    torch.save(STATE_DICTS[version](config, seed=seed), path)
    return path


def tokens(version: str, n: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randint(
        0, CONFIGS[version].vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed)
    )


@torch.no_grad()
def randomize_lora_(model: nn.Module, seed: int = 0) -> None:
    """Give every LoRA B matrix (zero when made) random values, so the adapter changes the model."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
