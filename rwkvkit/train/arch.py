"""The architectures ``rwkvkit train --arch`` builds: a registry of name -> builder.

A builder checks the shape flags its architecture needs, builds the model and gives it its
official initialisation. Adding an architecture is one function and one line in ARCHITECTURES.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import RwkvkitError
from ..models.gpt import GPT, GPTConfig, gpt_ffn_dim_matching, init_gpt_
from ..models.rwkv4 import RWKV4, RWKV4Config
from ..models.rwkv7 import RWKV7, RWKV7Config, init_rwkv7_
from .config import TrainConfig
from .init import init_rwkv4_

# (training config, vocabulary size) -> (initialised model, its model config)
Builder = Callable[[TrainConfig, int], tuple[nn.Module, Any]]


def _ffn_dim(cfg: TrainConfig) -> int:
    return round(cfg.ffn_mult * cfg.n_embd)


def build_rwkv4(cfg: TrainConfig, vocab_size: int) -> tuple[nn.Module, Any]:
    mc = RWKV4Config(vocab_size, cfg.n_layer, cfg.n_embd, _ffn_dim(cfg), chunk_len=cfg.chunk_len)
    model = RWKV4(mc)
    init_rwkv4_(model)
    return model, mc


def rwkv7_lora_dims(n_embd: int) -> dict[str, int]:
    """The official RWKV-7 trainer's low-rank widths: multiples of 32 growing like sqrt(C) (C^0.8 for the gate)."""

    def width(scale: float, power: float) -> int:
        return max(32, int(round(scale * n_embd**power / 32) * 32))

    return {
        "decay_lora": width(1.8, 0.5),
        "iclr_lora": width(1.8, 0.5),
        "value_lora": width(1.3, 0.5),
        "gate_lora": width(0.6, 0.8),
    }


def build_rwkv7(cfg: TrainConfig, vocab_size: int) -> tuple[nn.Module, Any]:
    if cfg.n_embd % cfg.head_size:
        raise RwkvkitError(f"--n-embd {cfg.n_embd} is not a multiple of --head-size {cfg.head_size}")
    mc = RWKV7Config(
        vocab_size, cfg.n_layer, cfg.n_embd, _ffn_dim(cfg), head_size=cfg.head_size, chunk_len=cfg.chunk_len,
        **rwkv7_lora_dims(cfg.n_embd),
    )  # fmt: skip
    model = RWKV7(mc)
    init_rwkv7_(model, seed=cfg.seed)
    return model, mc


def build_gpt(cfg: TrainConfig, vocab_size: int) -> tuple[nn.Module, Any]:
    """The transformer baseline, its MLP sized so that it has RWKV-4's parameter count."""
    if cfg.n_embd % cfg.n_head:
        raise RwkvkitError(f"--n-embd {cfg.n_embd} is not a multiple of --n-head {cfg.n_head}")
    ffn = gpt_ffn_dim_matching(vocab_size, cfg.n_layer, cfg.n_embd, _ffn_dim(cfg), cfg.ctx_len)
    mc = GPTConfig(vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, ffn, cfg.ctx_len)
    model = GPT(mc)
    init_gpt_(model)
    return model, mc


ARCHITECTURES: dict[str, Builder] = {"rwkv4": build_rwkv4, "rwkv7": build_rwkv7, "gpt": build_gpt}


def build(cfg: TrainConfig, vocab_size: int) -> tuple[nn.Module, dict[str, Any]]:
    """A freshly initialised model and its config dict (what the checkpoints' metadata holds)."""
    if cfg.arch not in ARCHITECTURES:
        raise RwkvkitError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {cfg.arch!r}")
    model, model_config = ARCHITECTURES[cfg.arch](cfg, vocab_size)
    d = model_config.to_dict()
    d.pop("chunk_len", None)  # a speed knob, not part of the model
    return model, d
