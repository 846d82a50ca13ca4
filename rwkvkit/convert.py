"""Converting checkpoints: any readable checkpoint to a BlinkDL .pth, .safetensors, a Hugging Face
folder, an rwkv.cpp file, a llama.cpp GGUF file or an ONNX graph of the one-token step
(``rwkvkit convert``, :mod:`rwkvkit.cli.convert`).

A LoRA run converts to its merged weights; a state-tuning run (RWKV-5/6/7) to its base's weights
with the tuned state as official ``blocks.N.att.time_state`` tensors, which the official ``rwkv``
package reads as its initial state (RWKV-PEFT's merged form)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .chat import ChatTemplate
from .checkpoint import RawCheckpoint, build_model, model_config, read_checkpoint, tokenizer_name_for_source
from .dtypes import DTYPES, dtype_from_name
from .errors import FileAccessError, RwkvkitError
from .fileio import atomic_path, atomic_write, check_writable, os_problem
from .formats import fla, hf, time_state
from .formats.gguf import WRITE_DTYPES as GGUF_DTYPES
from .formats.gguf import write_gguf
from .formats.rwkvcpp import rwkvcpp_version, write_rwkvcpp
from .tokenizer import GPT20B_JSON_PATH, Tokenizer, WorldTokenizerRef, load_tokenizer

TARGETS = ("pth", "safetensors", "hf", "rwkvcpp", "gguf", "onnx")
OUTPUT_DTYPES = tuple(dict.fromkeys((*DTYPES, *GGUF_DTYPES)))  # q8_0: GGUF only
WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"  # the name llama.cpp's converter and the RWKV/ code look for


def _cast(sd: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    return {k: v.to(dtype).contiguous() for k, v in sd.items()}


def save_pth(sd: dict[str, Tensor], dst: Path) -> None:
    """A BlinkDL state dict, as RWKV-LM's trainer saves it (the official package loads it)."""
    atomic_write(dst, lambda p: torch.save(sd, p))


def save_safetensors(sd: dict[str, Tensor], dst: Path, config: object) -> None:
    from safetensors.torch import save_file

    meta = {"format": "pt", "rwkvkit_config": json.dumps(config.to_dict())}  # type: ignore[attr-defined]
    atomic_write(dst, lambda p: save_file(sd, str(p), metadata=meta))


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    with atomic_path(path) as p:
        p.write_text(json.dumps(obj, indent=2) + "\n")


def _write_tokenizer_files(dst: Path, tokenizer: Tokenizer | None, tokenizer_class: str | None) -> None:
    """The tokenizer beside the weights: the World vocabulary as rwkv_vocab_v20230424.txt (what
    llama.cpp's converter and the RWKV/ tokenizer code read) with a tokenizer_config.json holding the
    chat template, or the 20B tokenizer.json of the RWKV-4 Pile models."""
    if isinstance(tokenizer, WorldTokenizerRef):
        lines = [f"{i} {_vocab_literal(tok)} {len(tok)}" for i, tok in sorted(tokenizer.vocab.items())]
        with atomic_path(dst / WORLD_VOCAB_FILE) as p:
            p.write_text("\n".join(lines) + "\n", encoding="utf-8")
        config = {"bos_token": "<s>", "eos_token": "<s>", "unk_token": "<s>", "add_prefix_space": False,
                  "chat_template": ChatTemplate().jinja()}  # fmt: skip
        if tokenizer_class:
            config["tokenizer_class"] = tokenizer_class
        _write_json(dst / "tokenizer_config.json", config)
    elif tokenizer is not None and tokenizer.name == "20b":
        atomic_write(dst / "tokenizer.json", lambda p: shutil.copyfile(GPT20B_JSON_PATH, p))


def _vocab_literal(token: bytes) -> str:
    """A World vocabulary line's literal: the str repr where the bytes are UTF-8, else the bytes repr."""
    try:
        return repr(token.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(token)


def _check_ln_x_eps_fits(config: Any) -> None:
    """Warn where a folder's config cannot record this model's ln_x eps (it then loads with another)."""
    if config.version in ("5", "6") and hf.head_size_divisor(config.ln_x_eps) is None:
        recorded = "the remote code's 1e-5 * head_size_divisor**2"
    elif config.version == "7" and not math.isclose(
        config.ln_x_eps, config.head_size * config.layer_norm_eps
    ):
        recorded = "fla's head_dim * norm_eps"
    else:
        return
    warnings.warn(
        f"this model runs ln_x with eps {config.ln_x_eps}, which a Hugging Face folder can only record as "
        f"{recorded}; its logits will differ. Convert to safetensors to keep it.",
        stacklevel=3,
    )


def save_hf(
    sd: dict[str, Tensor], dst: Path, config: Any, dtype_name: str, tokenizer: Tokenizer | None
) -> None:
    """A Hugging Face folder for every version: transformers' ``RwkvForCausalLM`` (RWKV-4), the
    RWKV/ remote-code layout (RWKV-5, RWKV-6) or flash-linear-attention's ``RWKV7ForCausalLM``
    (RWKV-7): config.json, model.safetensors and the tokenizer files."""
    from safetensors.torch import save_file

    version = config.version
    if version == "4":
        cfg, weights, tok_class = hf.hf_config(config), hf.blinkdl_to_hf(sd), None
    elif version in ("5", "6"):
        cfg, weights = hf.remote_code_config(config), hf.blinkdl_to_hf(sd)
        tok_class = f"Rwkv{version}Tokenizer"
    elif version == "7":
        cfg, weights, tok_class = fla.fla_config(config), fla.blinkdl_to_fla(sd), None
    else:
        raise RwkvkitError(f"there is no Hugging Face form of RWKV-{version} models; convert to safetensors")
    if version != "4":
        _check_ln_x_eps_fits(config)
    try:
        dst.mkdir(exist_ok=True)
    except OSError as e:
        raise FileAccessError(dst, f"cannot create the folder: {os_problem(e)}") from None
    cfg["torch_dtype"] = str(DTYPES[dtype_name]).removeprefix("torch.")  # "float32", "bfloat16", ...
    atomic_write(
        dst / "model.safetensors",
        lambda p: save_file(
            {k: v.contiguous() for k, v in weights.items()}, str(p), metadata={"format": "pt"}
        ),
    )
    _write_json(dst / "config.json", cfg)
    _write_tokenizer_files(dst, tokenizer, tok_class)


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


def _tokenizer_of(raw: RawCheckpoint, vocab_size: int) -> Tokenizer | None:
    try:
        return load_tokenizer(tokenizer_name_for_source(raw, vocab_size))
    except RwkvkitError:
        return None  # a vocabulary size no built-in tokenizer has: the weights go without one


def _save_gguf(raw: RawCheckpoint, dst: Path, dtype: str) -> None:
    if raw.version not in ("6", "7"):
        raise RwkvkitError(
            f"llama.cpp runs RWKV-6 and RWKV-7 only (its architectures 'rwkv6', 'rwkv7'); {raw.path} is an "
            f"RWKV-{raw.version} model: convert it to pth, safetensors, hf or rwkvcpp instead"
        )
    model = build_model(raw)  # names, shapes and values checked; every tensor in its canonical shape
    tokenizer = _tokenizer_of(raw, model.config.vocab_size)
    if not isinstance(tokenizer, WorldTokenizerRef):
        raise RwkvkitError(
            "llama.cpp's RWKV models use the RWKV World tokenizer (a 65536-row embedding); this model's "
            f"tokenizer is {getattr(tokenizer, 'name', 'unknown')!r}, which a GGUF file cannot carry"
        )
    write_gguf(dst, model.state_dict(), model.config, dtype, tokenizer.vocab,
               chat_template=ChatTemplate().jinja(), name=dst.stem)  # fmt: skip


def check_destination(dst: Path, to: str, force: bool) -> None:
    """Refuse, before reading anything, a destination that cannot be written or would be replaced
    without ``force``: a file for the file formats, a folder (new, empty or ``force``) for hf."""
    if to != "hf":
        if dst.is_dir():
            raise FileAccessError(dst, f"is a folder; --to {to} writes one file: name the file")
        if dst.exists() and not force:
            raise FileAccessError(dst, "already exists; pass --force to replace it")
        check_writable(dst)
        return
    if dst.exists() and not dst.is_dir():
        raise FileAccessError(dst, "is a file; --to hf writes a folder: name a new or existing folder")
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

    ``dtype``: one of OUTPUT_DTYPES; None keeps the source's (fp32 where the target cannot hold it:
    a bf16 source to rwkv.cpp, anything to ONNX). An existing ``dst`` is replaced only with ``force``.
    """
    if to not in TARGETS:
        raise RwkvkitError(f"unknown target format {to!r}; choose one of {', '.join(TARGETS)}")
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise RwkvkitError(f"unknown dtype {dtype!r}; choose one of {', '.join(OUTPUT_DTYPES)}")
    if dtype is not None and dtype not in DTYPES and to != "gguf":
        raise RwkvkitError(f"{dtype} is a GGUF file type; --to {to} takes {', '.join(DTYPES)}")
    if to == "onnx" and dtype not in (None, "fp32"):
        raise RwkvkitError("ONNX export writes fp32 weights; pass --dtype fp32")
    dst = Path(dst)
    check_destination(dst, to, force)
    raw = read_checkpoint(src)
    if dtype is None:
        cannot_hold = to == "onnx" or (to == "rwkvcpp" and raw.dtype == "bf16")
        dtype = "fp32" if cannot_hold else raw.dtype
    try:
        _write(raw, dst, to, dtype)
    except OSError as e:  # the destination, not the source: read_checkpoint reports its own
        raise FileAccessError(dst, f"cannot write it: {os_problem(e)}") from None
    return dst


def _write(raw: RawCheckpoint, dst: Path, to: str, dtype: str) -> None:
    tuned_state = _tuned_state(raw, to)  # refused before anything is written
    if to == "gguf":
        _save_gguf(raw, dst, dtype)
        return
    if to == "onnx":
        from .formats.onnx import export_onnx

        export_onnx(build_model(raw), dst)
        return
    torch_dtype = dtype_from_name(dtype)
    config = model_config(raw)
    if to == "rwkvcpp":
        if dtype == "bf16":
            raise RwkvkitError("rwkv.cpp files hold fp32 or fp16 weights; pass --dtype fp32 or fp16")
        _check_rwkvcpp_can_hold(config, raw.format)
        write_rwkvcpp(dst, raw.state_dict, version=rwkvcpp_version(raw.state_dict.keys()), data_type=dtype)
        return
    if to == "hf":
        tokenizer = _tokenizer_of(raw, config.vocab_size)
        model = build_model(raw)  # every tensor in its canonical shape, as the folders' code wants it
        save_hf(_cast(model.state_dict(), torch_dtype), dst, model.config, dtype, tokenizer)
        return
    sd = {**_cast(raw.state_dict, torch_dtype), **tuned_state}
    if to == "pth" and getattr(config, "ln_x_eps", 64e-5) != 64e-5:
        warnings.warn(
            f"{raw.path} runs RWKV-{config.version}'s ln_x with eps {config.ln_x_eps} (rwkv.cpp's value), "
            f"which a {to} checkpoint cannot record: it will load with BlinkDL's 64e-5 and give different "
            "logits. Convert to safetensors to keep it.",
            stacklevel=3,
        )
    if to == "pth":
        save_pth(sd, dst)
    else:
        save_safetensors(sd, dst, config)
