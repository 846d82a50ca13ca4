"""Converting checkpoints: any readable checkpoint to a BlinkDL .pth, .safetensors, a Hugging
Face folder or an rwkv.cpp file (``rwkvkit convert``, :mod:`rwkvkit.cli.convert`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import model_config, read_checkpoint
from .dtypes import DTYPES, dtype_from_name
from .errors import FileAccessError, RwkvkitError
from .fileio import atomic_path, atomic_write, check_writable, os_problem
from .formats import hf
from .formats.rwkvcpp import rwkvcpp_version, write_rwkvcpp

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
    try:
        dst.mkdir(exist_ok=True)
    except OSError as e:
        raise FileAccessError(dst, f"cannot create the folder: {os_problem(e)}") from None
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


def check_destination(dst: Path, to: str, force: bool) -> None:
    """Refuse, before reading anything, a destination that cannot be written or would be replaced
    without ``force``: a file for the file formats, a folder (new, empty or ``force``) for hf."""
    if to != "hf":
        if dst.exists() and not dst.is_dir() and not force:
            raise FileAccessError(dst, "already exists; pass --force to replace it")
        check_writable(dst)
        return
    if dst.exists() and not dst.is_dir():
        raise FileAccessError(dst, "is a file, not a folder; --to hf writes a folder")
    if (
        dst.is_dir()
        and any((dst / name).exists() for name in ("config.json", "model.safetensors"))
        and not force
    ):
        raise FileAccessError(dst, "already holds a model; pass --force to replace it")
    check_writable(dst / "config.json" if dst.is_dir() else dst)


def convert(
    src: str | Path, dst: str | Path, to: str, dtype: str | None = None, *, force: bool = False
) -> Path:
    """Read ``src`` in any supported form and write it to ``dst`` as ``to``.

    ``dtype``: "fp32", "bf16" or "fp16"; None keeps the source's (an rwkv.cpp target takes fp32
    for a bf16 source, which it cannot hold). An existing ``dst`` is replaced only with ``force``.
    """
    if to not in TARGETS:
        raise RwkvkitError(f"unknown target format {to!r}; choose one of {', '.join(TARGETS)}")
    if dtype is not None:
        dtype_from_name(dtype)
    dst = Path(dst)
    check_destination(dst, to, force)
    raw = read_checkpoint(src)
    if dtype is None:
        dtype = "fp32" if to == "rwkvcpp" and raw.dtype == "bf16" else raw.dtype
    torch_dtype = dtype_from_name(dtype)
    config = model_config(raw)
    if to == "rwkvcpp":
        if dtype == "bf16":
            raise RwkvkitError("rwkv.cpp files hold fp32 or fp16 weights; pass --dtype fp32 or fp16")
        _check_rwkvcpp_can_hold(config, raw.format)
        write_rwkvcpp(dst, raw.state_dict, version=rwkvcpp_version(raw.state_dict.keys()), data_type=dtype)
        return dst
    sd = _cast(raw.state_dict, torch_dtype)
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
