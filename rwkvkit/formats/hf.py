"""Hugging Face ``RwkvForCausalLM`` (RWKV-4) names and config, as flat maps and pure functions."""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from ..errors import CheckpointError
from .values import config_number

# BlinkDL suffix inside a block -> transformers suffix (the rest of the name is the same).
# The RWKV-5/6 remote-code folders (RWKV/rwkv-5-world-*, RWKV/v6-Finch-*-HF) use the same scheme; their
# extra tensors keep BlinkDL's names after the prefix, except 5.x's time_mix_g.
_BLOCK_PARTS = {
    "ln0.": "pre_ln.",
    "att.time_mix_g": "attention.time_mix_gate",
    "att.time_mix_k": "attention.time_mix_key",
    "att.time_mix_v": "attention.time_mix_value",
    "att.time_mix_r": "attention.time_mix_receptance",
    "att.": "attention.",
    "ffn.time_mix_k": "feed_forward.time_mix_key",
    "ffn.time_mix_r": "feed_forward.time_mix_receptance",
    "ffn.": "feed_forward.",
}
_TOP = {"emb.weight": "rwkv.embeddings.weight", "head.weight": "head.weight"}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.*)$")
_HF_BLOCK_RE = re.compile(r"^rwkv\.blocks\.(\d+)\.(.*)$")


def blinkdl_to_hf_name(name: str) -> str:
    if name in _TOP:
        return _TOP[name]
    if name.startswith("ln_out."):
        return "rwkv." + name
    m = _BLOCK_RE.match(name)
    if m is None:
        raise KeyError(name)
    layer, rest = m.groups()
    for ours, theirs in _BLOCK_PARTS.items():  # ordered: the specific time_mix names come first
        if rest.startswith(ours):
            rest = theirs + rest[len(ours) :]
            break
    return f"rwkv.blocks.{layer}.{rest}"


def hf_to_blinkdl_name(name: str) -> str:
    for ours, theirs in _TOP.items():
        if name == theirs:
            return ours
    if name.startswith("rwkv.ln_out."):
        return name[len("rwkv.") :]
    m = _HF_BLOCK_RE.match(name)
    if m is None:
        raise KeyError(name)
    layer, rest = m.groups()
    for ours, theirs in _BLOCK_PARTS.items():
        if rest.startswith(theirs):
            rest = ours + rest[len(theirs) :]
            break
    return f"blocks.{layer}.{rest}"


def is_hf_state_dict(keys: Any) -> bool:
    return any(k.startswith("rwkv.") for k in keys)


def hf_to_blinkdl(sd: dict[str, Tensor], path: Any = None) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        try:
            out[hf_to_blinkdl_name(k)] = v
        except KeyError:
            raise CheckpointError(path, f"unexpected key {k!r} in a Hugging Face RWKV checkpoint") from None
    return out


def blinkdl_to_hf(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {blinkdl_to_hf_name(k): v for k, v in sd.items()}


def hf_config(config: Any, context_length: int = 1024) -> dict[str, Any]:
    """config.json for transformers. ``rescale_every: 0``: transformers would otherwise halve some
    weights in place every 6 layers in eval mode, which changes results in fp32 by rounding."""
    return {
        "architectures": ["RwkvForCausalLM"],
        "model_type": "rwkv",
        "vocab_size": config.vocab_size,
        "context_length": context_length,
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "attention_hidden_size": config.n_embd,
        "intermediate_size": config.ffn_dim,
        "layer_norm_epsilon": config.layer_norm_eps,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "rescale_every": 0,
        "tie_word_embeddings": False,
        "use_cache": True,
    }


def config_overrides_from_hf(cfg: dict[str, Any], where: Any = "config.json") -> dict[str, Any]:
    """What an HF config.json says that the weights' shapes do not, checked (``where``: the file)."""
    out = {}
    if "layer_norm_epsilon" in cfg:
        out["layer_norm_eps"] = config_number(cfg, "layer_norm_epsilon", where, low=0.0, high=1.0)
    return out
