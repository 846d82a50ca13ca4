"""Hugging Face RWKV folders: transformers' ``RwkvForCausalLM`` (RWKV-4) and the ``RWKV/`` remote-code
folders of RWKV-5 and RWKV-6 (``Rwkv5ForCausalLM``, ``Rwkv6ForCausalLM``, as in RWKV/rwkv-5-world-1b5
and RWKV/v6-Finch-1B6-HF): names and config.json, as flat maps and pure functions."""

from __future__ import annotations

import math
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


# Where the RWKV/ remote code lives: config.json's auto_map points there ("repo--module.Class"), so
# transformers can fetch it (trust_remote_code=True) without copying that code into every folder.
REMOTE_CODE = {
    "5": ("RWKV/rwkv-5-world-1b5", "rwkv5", "Rwkv5"),
    "6": ("RWKV/v6-Finch-1B6-HF", "rwkv6", "Rwkv6"),
}
LN_X_EPS_UNIT = 1e-5  # the remote code's GroupNorm eps is 1e-5 * head_size_divisor ** 2 (64e-5 at 8)


def head_size_divisor(ln_x_eps: float) -> int | None:
    """The remote code's ``head_size_divisor`` that gives this ln_x eps, if one does."""
    divisor = round(math.sqrt(ln_x_eps / LN_X_EPS_UNIT))
    return divisor if divisor > 0 and math.isclose(LN_X_EPS_UNIT * divisor**2, ln_x_eps) else None


def remote_code_config(config: Any) -> dict[str, Any]:
    """config.json of an RWKV/ remote-code folder for an RWKV-5 or RWKV-6 config; the fields llama.cpp's
    converter reads for RWKV-6 (head_size, hidden_size, layer_norm_epsilon, rescale_every,
    intermediate_size, num_hidden_layers, vocab_size) among them. ``rescale_every: 0`` as for RWKV-4."""
    repo, module, prefix = REMOTE_CODE[config.version]
    return {
        "architectures": [f"{prefix}ForCausalLM"],
        "auto_map": {
            "AutoConfig": f"{repo}--configuration_{module}.{prefix}Config",
            "AutoModelForCausalLM": f"{repo}--modeling_{module}.{prefix}ForCausalLM",
        },
        "model_type": module,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "attention_hidden_size": config.att_width,
        "num_attention_heads": config.n_head,
        "head_size": config.head_size,
        "head_size_divisor": head_size_divisor(config.ln_x_eps) or 8,
        "intermediate_size": config.ffn_dim,
        "layer_norm_epsilon": config.layer_norm_eps,
        "rescale_every": 0,
        "context_length": 4096,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "tie_word_embeddings": False,
        "use_cache": True,
    }


def config_overrides_from_hf(cfg: dict[str, Any], where: Any = "config.json") -> dict[str, Any]:
    """What an HF config.json says that the weights' shapes do not, checked (``where``: the file)."""
    out: dict[str, Any] = {}
    if "layer_norm_epsilon" in cfg:
        out["layer_norm_eps"] = config_number(cfg, "layer_norm_epsilon", where, low=0.0, high=1.0)
    if cfg.get("model_type") in ("rwkv5", "rwkv6") and "head_size_divisor" in cfg:
        divisor = config_number(cfg, "head_size_divisor", where, low=0.0, high=1000.0)
        out["ln_x_eps"] = LN_X_EPS_UNIT * divisor**2
    return out
