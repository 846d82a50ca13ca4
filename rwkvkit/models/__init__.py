"""One module per RWKV version; this file only maps a state dict's keys to the right one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from ..errors import UnsupportedVersionError
from .gpt import GPT, GPTConfig, GPTState
from .rwkv4 import RWKV4, RWKV4Config, RWKV4State
from .rwkv5 import RWKV5, RWKV5Config, RWKV5State
from .rwkv6 import RWKV6, RWKV6Config, RWKV6State
from .rwkv7 import RWKV7, RWKV7Config, RWKV7State

# version -> (config class, model class). Later versions register here.
MODELS: dict[str, tuple[Any, type[nn.Module]]] = {
    "4": (RWKV4Config, RWKV4),
    "5": (RWKV5Config, RWKV5),
    "6": (RWKV6Config, RWKV6),
    "7": (RWKV7Config, RWKV7),
    "gpt": (GPTConfig, GPT),  # the transformer baseline that `rwkvkit train --arch gpt` trains
}


def detect_version(keys: Iterable[str]) -> str:
    """The RWKV version a BlinkDL-named state dict belongs to, from its key names alone.

    Returns "4", "5", "6" or "7" ("gpt" for the training baseline of models/gpt.py). The RWKV-5 sub-versions (5.0, 5.1, 5.2) are one model whose
    config reads the differences off the keys and shapes (see models/rwkv5.py).
    """
    names = {k.split(".", 2)[-1] if k.startswith("blocks.") else k for k in keys}
    if "wpe.weight" in names and "attn.qkv.weight" in names:
        return "gpt"
    if {"att.time_aaaaa", "att.time_misc_a", "att.time_misc_kkk"} & names:
        raise UnsupportedVersionError(
            None,
            "this is a pre-release RWKV-7 checkpoint (x070 drafts with att.time_aaaaa/time_misc_* keys), "
            "whose layout changed before release; use a released RWKV-7 checkpoint (att.w0, att.a0, att.r_k ...)",
        )
    if {"att.r_k", "att.w0", "att.x_rwkvag", "att.x_r", "att.k_k"} & names:
        if "ffn.s_emb.weight" in names:
            raise UnsupportedVersionError(
                None,
                "this is an RWKV-7 DeepEmbed checkpoint (ffn.s_emb/s1/s2/s0 keys), a variant not supported "
                "yet; plain RWKV-7 checkpoints load",
            )
        return "7"
    if "att.time_maa_x" in names or "att.time_maa_w1" in names:
        return "6"
    if "att.ln_x.weight" in names:
        return "5"
    if "att.time_first" in names and "att.time_decay" in names:
        return "4"
    raise UnsupportedVersionError(None, "the keys match no RWKV version this library knows (4, 5, 6 or 7)")


def model_classes(version: str, path: Any = None) -> tuple[Any, type[nn.Module]]:
    if version not in MODELS:
        raise UnsupportedVersionError(
            path,
            f"this is an RWKV-{version} checkpoint, and RWKV-{version} is not supported yet (supported: "
            + ", ".join(f"RWKV-{v}" for v in MODELS)
            + ")",
        )
    return MODELS[version]


__all__ = [
    "GPT",
    "MODELS",
    "RWKV4",
    "RWKV5",
    "RWKV6",
    "RWKV7",
    "GPTConfig",
    "GPTState",
    "RWKV4Config",
    "RWKV4State",
    "RWKV5Config",
    "RWKV5State",
    "RWKV6Config",
    "RWKV6State",
    "RWKV7Config",
    "RWKV7State",
    "detect_version",
    "model_classes",
]
