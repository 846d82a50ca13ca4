"""flash-linear-attention's ``RWKV7ForCausalLM`` (Hugging Face folders with model_type "rwkv7"):
names and layouts as a flat map plus pure functions on state dicts.

fla renames BlinkDL's tensors and stores the low-rank pairs as ``nn.Linear`` layers: BlinkDL's
``att.w1`` (C, D) is ``attn.w_lora.lora.0.weight`` (D, C), ``att.w2`` (D, C) is
``attn.w_lora.lora.2.weight`` (C, D) and the bias ``att.w0`` (1, 1, C) is ``attn.w_lora.lora.2.bias``
(C,); the same for a (in-context rate), v (value residual) and g (gate, which has no bias). Vectors
such as ``k_k`` are stored flat; layer 0 has no value-residual LoRA.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from ..errors import CheckpointError
from .values import config_number

_TOP = {
    "emb.weight": "model.embeddings.weight",
    "ln_out.weight": "model.norm.weight",
    "ln_out.bias": "model.norm.bias",
    "head.weight": "lm_head.weight",
}
_PARTS = {"att": "attn", "ffn": "ffn", "ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}
_ATT_LINEAR = {
    "receptance": "r_proj",
    "key": "k_proj",
    "value": "v_proj",
    "output": "o_proj",
    "ln_x": "g_norm",
}
_LORA = {"0": "2.bias", "1": "0.weight", "2": "2.weight"}  # BlinkDL suffix digit -> fla's lora layer
_TOP_BACK = {v: k for k, v in _TOP.items()}
_PARTS_BACK = {v: k for k, v in _PARTS.items()}
_ATT_LINEAR_BACK = {v: k for k, v in _ATT_LINEAR.items()}
_LORA_BACK = {v: k for k, v in _LORA.items()}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(\w+)\.(.+)$")
_FLA_RE = re.compile(r"^model\.layers\.(\d+)\.(\w+)\.(.+)$")
_FLA_LORA_RE = re.compile(r"^([wavg])_lora\.lora\.(\d)\.(weight|bias)$")


def is_fla_state_dict(keys: Any) -> bool:
    return any(k.startswith("model.layers.") for k in keys)


def _is_transposed_lora(blinkdl_leaf: str) -> bool:
    return re.fullmatch(r"[wavg][12]", blinkdl_leaf) is not None


def blinkdl_to_fla_name(name: str) -> str:
    if name in _TOP:
        return _TOP[name]
    m = _BLOCK_RE.match(name)
    if m is None or m.group(2) not in _PARTS:
        raise KeyError(name)
    layer, part, rest = m.groups()
    if part == "att":
        head, _, tail = rest.partition(".")
        if re.fullmatch(r"[wavg][012]", rest):
            rest = f"{rest[0]}_lora.lora.{_LORA[rest[1]]}"
        elif head in _ATT_LINEAR:
            rest = f"{_ATT_LINEAR[head]}.{tail}"
    return f"model.layers.{layer}.{_PARTS[part]}.{rest}"


def fla_to_blinkdl_name(name: str) -> str:
    if name in _TOP_BACK:
        return _TOP_BACK[name]
    m = _FLA_RE.match(name)
    if m is None or m.group(2) not in _PARTS_BACK:
        raise KeyError(name)
    layer, part, rest = m.groups()
    if part == "attn":
        lora = _FLA_LORA_RE.match(rest)
        head, _, tail = rest.partition(".")
        if lora is not None:
            digit = _LORA_BACK.get(f"{lora.group(2)}.{lora.group(3)}")
            if digit is None:
                raise KeyError(name)
            rest = lora.group(1) + digit
        elif head in _ATT_LINEAR_BACK:
            rest = f"{_ATT_LINEAR_BACK[head]}.{tail}"
        elif not re.fullmatch(r"x_[rwkvag]|k_k|k_a|r_k", rest):
            raise KeyError(name)
    return f"blocks.{layer}.{_PARTS_BACK[part]}.{rest}"


def fla_to_blinkdl(sd: dict[str, Tensor], path: Any = None) -> dict[str, Tensor]:
    """fla names and layouts -> BlinkDL's (vectors stay flat: the loader reshapes size-1 dims)."""
    out = {}
    for k, v in sd.items():
        try:
            name = fla_to_blinkdl_name(k)
        except KeyError:
            raise CheckpointError(
                path, f"unexpected key {k!r} in a flash-linear-attention RWKV-7 checkpoint"
            ) from None
        out[name] = v.t() if _is_transposed_lora(name.rsplit(".", 1)[-1]) else v
    return out


def blinkdl_to_fla(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """BlinkDL -> fla names and layouts; layer 0's unused value-residual LoRA is left out, as fla has none."""
    out = {}
    for k, v in sd.items():
        leaf = k.rsplit(".", 1)[-1]
        if k.startswith("blocks.0.att.v") and re.fullmatch(r"v[012]", leaf):
            continue
        if _is_transposed_lora(leaf):
            v = v.t()
        elif re.fullmatch(r"[wav]0|k_k|k_a", leaf) or k.endswith("ffn.x_k"):
            v = v.reshape(-1)  # fla keeps these vectors flat
        elif re.fullmatch(r"x_[rwkvag]", leaf):
            v = v.reshape(1, 1, -1)  # and these (1, 1, C), as nn.Parameter(torch.zeros(1, 1, C))
        out[blinkdl_to_fla_name(k)] = v.contiguous()
    return out


def fla_config(config: Any) -> dict[str, Any]:
    """config.json of fla's ``RWKV7ForCausalLM`` for an RWKV-7 config (the fields llama.cpp's converter
    reads too: hidden_size, intermediate_size, num_hidden_layers, head_dim, norm_eps, the four
    ``*_low_rank_dim`` and vocab_size)."""
    return {
        "architectures": ["RWKV7ForCausalLM"],
        "model_type": "rwkv7",
        "attn_mode": "chunk",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "hidden_ratio": config.ffn_dim / config.n_embd,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layer,
        "head_dim": config.head_size,
        "num_heads": config.n_head,
        "decay_low_rank_dim": config.decay_lora,
        "a_low_rank_dim": config.iclr_lora,
        "v_low_rank_dim": config.value_lora,
        "gate_low_rank_dim": config.gate_lora,
        "hidden_act": "sqrelu",
        "norm_first": True,
        "norm_bias": True,
        "norm_eps": config.layer_norm_eps,
        "attn": None,
        "use_cache": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "tie_word_embeddings": False,
        "fuse_norm": False,
        "fuse_cross_entropy": True,
    }


def config_overrides_from_fla(cfg: dict[str, Any], where: Any = "config.json") -> dict[str, Any]:
    """fla's norm_eps is its LayerNorms' eps; its GroupNorm ln_x uses head_dim * norm_eps (64e-5 at 64).
    Values are checked (``where``: the file they come from)."""
    out: dict[str, Any] = {}
    head_dim = 64
    if cfg.get("head_dim") is not None:
        head_dim = config_number(cfg, "head_dim", where, kind=int, low=1, high=1 << 16)
    if "norm_eps" in cfg:
        eps = config_number(cfg, "norm_eps", where, low=0.0, high=1.0)
        out["layer_norm_eps"] = eps
        out["ln_x_eps"] = head_dim * eps
    return out
