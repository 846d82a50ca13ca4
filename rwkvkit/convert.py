"""Converting checkpoints: any readable checkpoint to a BlinkDL .pth, .safetensors, a Hugging
Face folder or an rwkv.cpp file (``rwkvkit convert``, :mod:`rwkvkit.cli.convert`).

A LoRA run converts to its merged weights; a state-tuning run (RWKV-5/6/7) to its base's weights
with the tuned state as official ``blocks.N.att.time_state`` tensors, which the official ``rwkv``
package reads as its initial state (RWKV-PEFT's merged form)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import RawCheckpoint, build_model, read_checkpoint
from .dtypes import DTYPES, dtype_from_name
from .errors import RwkvkitError
from .fileio import atomic_path, atomic_write
from .formats import hf, time_state
from .formats.rwkvcpp import rwkvcpp_version, write_rwkvcpp
from .models import model_classes

TARGETS = ("pth", "safetensors", "hf", "rwkvcpp")


def _cast(sd: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    return {k: v.to(dtype).contiguous() for k, v in sd.items()}


def save_pth(sd: dict[str, Tensor], dst: Path) -> None:
    """A BlinkDL state dict, as RWKV-LM's trainer saves it (the official package loads it)."""
    atomic_write(dst, lambda p: torch.save(sd, p))


def save_safetensors(sd: dict[str, Tensor], dst: Path, config: object) -> None:
    from safetensors.torch import save_file

    meta = {"format": "pt", "rwkvkit_config": json.dumps(config.to_dict())}  # type: ignore[attr-defined]
    atomic_write(dst, lambda p: save_file(sd, str(p), metadata=meta))


def save_hf(sd: dict[str, Tensor], dst: Path, config: object, dtype_name: str) -> None:
    """A folder that ``transformers.RwkvForCausalLM.from_pretrained`` loads."""
    from safetensors.torch import save_file

    if getattr(config, "version", None) != "4":
        raise RwkvkitError("Hugging Face output is available for RWKV-4 only so far")
    dst.mkdir(parents=True, exist_ok=True)
    cfg = hf.hf_config(config)
    cfg["torch_dtype"] = str(DTYPES[dtype_name]).removeprefix("torch.")  # "float32", "bfloat16", ...
    atomic_write(
        dst / "model.safetensors",
        lambda p: save_file(hf.blinkdl_to_hf(sd), str(p), metadata={"format": "pt"}),
    )
    with atomic_path(dst / "config.json") as p:
        p.write_text(json.dumps(cfg, indent=2) + "\n")


def _check_rwkvcpp_can_hold(config: object, source_format: str) -> None:
    """rwkv.cpp knows RWKV-5 as "5.1" (no gate, per-head decay: BlinkDL's 5.0) and "5.2"; BlinkDL's
    5.1 (gate with per-head decay) has no rwkv.cpp form. rwkv.cpp also runs v5's ln_x with eps 1e-5."""
    if getattr(config, "version", None) != "5":
        return
    if config.gate and not config.per_channel_decay:  # type: ignore[attr-defined]
        raise RwkvkitError(
            "this is an RWKV-5.1 model (output gate, one decay per head), which rwkv.cpp's file format "
            "cannot describe (its v5 files are 5.0 without gate or 5.2 with per-channel decay); "
            "convert it to pth or safetensors instead"
        )
    if source_format != "rwkvcpp":
        warnings.warn(
            "rwkv.cpp runs RWKV-5's ln_x with eps 1e-5 where BlinkDL's code uses 64e-5, so the written "
            "file's logits (in rwkv.cpp and in rwkvkit) will differ from this checkpoint's",
            stacklevel=3,
        )


def _tuned_state(raw: RawCheckpoint, to: str) -> dict[str, Tensor]:
    """A tuned initial state that comes with the checkpoint (a state-tuning run's, or official
    ``time_state`` keys in the file), in the official layout (float32), to write beside the weights.
    Only .pth and .safetensors files can hold it, and only for RWKV-5/6/7."""
    if not raw.time_state and raw.state_file is None:
        return {}
    where = raw.state_file or raw.path
    if to not in ("pth", "safetensors"):
        raise RwkvkitError(
            f"{where}: a tuned initial state has no place in a {to} file; convert to pth or safetensors "
            "(which hold it as official blocks.N.att.time_state tensors), or pass the state file with --state"
        )
    if raw.version not in time_state.VERSIONS:
        raise RwkvkitError(
            f"{where}: RWKV-{raw.version} has no official layout for a tuned state; the weights alone are "
            f"the base's ({raw.path}), so use that with --state {where}"
        )
    if raw.state_file is None:
        return {k: v.float() for k, v in raw.time_state.items()}
    model = build_model(dataclasses.replace(raw, state_dict=dict(raw.state_dict)))  # reads the state file
    return time_state.from_state(model.default_state, raw.version)  # type: ignore[arg-type]


def convert(src: str | Path, dst: str | Path, to: str, dtype: str = "fp32") -> Path:
    """Read ``src`` in any supported form and write it to ``dst`` as ``to``."""
    if to not in TARGETS:
        raise RwkvkitError(f"unknown target format {to!r}; choose one of {', '.join(TARGETS)}")
    torch_dtype = dtype_from_name(dtype)
    raw = read_checkpoint(src)
    config_cls, _ = model_classes(raw.version, raw.path)
    config = config_cls.from_state_dict(raw.state_dict, **raw.config_overrides)
    dst = Path(dst)
    tuned_state = _tuned_state(raw, to)
    if to == "rwkvcpp":
        if dtype == "bf16":
            raise RwkvkitError("rwkv.cpp files hold fp32 or fp16 weights; pass --dtype fp32 or fp16")
        _check_rwkvcpp_can_hold(config, raw.format)
        write_rwkvcpp(dst, raw.state_dict, version=rwkvcpp_version(raw.state_dict.keys()), data_type=dtype)
        return dst
    sd = {**_cast(raw.state_dict, torch_dtype), **tuned_state}
    if to in ("pth", "hf") and getattr(config, "ln_x_eps", 64e-5) != 64e-5:
        warnings.warn(
            f"{raw.path} runs RWKV-{config.version}'s ln_x with eps {config.ln_x_eps} (rwkv.cpp's value), "
            f"which a {to} checkpoint cannot record: it will load with BlinkDL's 64e-5 and give different "
            "logits. Convert to safetensors to keep it.",
            stacklevel=2,
        )
    if to == "pth":
        save_pth(sd, dst)
    elif to == "safetensors":
        save_safetensors(sd, dst, config)
    else:
        save_hf(sd, dst, config, dtype)
    return dst
