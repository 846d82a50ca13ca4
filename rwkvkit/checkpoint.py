"""Reading checkpoints in every form users bring, detected from content rather than file name.

Everything is read into one canonical form: a BlinkDL-named state dict (``emb.weight``,
``blocks.N.att.time_decay``, ...) plus config overrides the weights alone cannot tell
(e.g. a layer-norm epsilon). Then :func:`load_model` builds the model on the meta device and
assigns the tensors, so the weights are never held twice.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .device import resolve_device
from .errors import CheckpointError, RwkvkitError, TokenizerError, UnsupportedVersionError
from .fileio import check_regular_file, os_problem, parse_json, read_json
from .formats import fla, hf, hub
from .formats.gguf import MAGIC as GGUF_MAGIC
from .formats.gguf import read_gguf
from .formats.run import (
    ADAPTER_DIR,
    STATE_FILE,
    is_run_folder,
    latest_checkpoint,
    read_run_file,
    run_method,
    tuned_base,
)
from .formats.rwkvcpp import MAGIC as RWKVCPP_MAGIC
from .formats.rwkvcpp import read_rwkvcpp
from .formats.time_state import split_time_state, to_state
from .formats.torchzip import verify_zip
from .formats.values import config_number
from .inference import QUANTIZE_MODES, optimize_for_inference
from .models import detect_version, model_classes
from .tokenizer import Tokenizer, check_vocab_fits, load_tokenizer, tokenizer_name_for_vocab_size

RWKVCPP_V5_LN_X_EPS = 1e-5
# Parameters kept in float32 whatever dtype the model runs in: the official package does the same,
# because exp(time_decay) in 16 bits loses the slow decays that carry long memory.
FP32_PARAMS = ("time_decay", "time_first", "time_faaaa")


@dataclass
class RawCheckpoint:
    """A checkpoint read into canonical form, before a model is built from it."""

    path: Path
    format: str  # "pth", "safetensors", "hf", "rwkvcpp", "run", "gguf"
    state_dict: dict[str, Tensor]
    version: str
    config_overrides: dict[str, Any] = field(default_factory=dict)
    # A tuned initial state that comes with the weights: official ``blocks.N.att.time_state``
    # tensors found in the file, and/or a state file to load (a state-tuning run's).
    time_state: dict[str, Tensor] = field(default_factory=dict)
    state_file: Path | None = None
    # The weights' dtype in the file ("fp32", "fp16", "bf16"), what convert keeps by default; an
    # rwkv.cpp file's quantized types read as fp32, the dtype they are dequantized to.
    dtype: str = "fp32"


def sniff_format(path: Path) -> str:
    """Which reader a path needs, judged from what is in it."""
    try:
        if not path.exists():
            raise CheckpointError(path, "no such file or folder")
        if path.is_dir():
            if (path / "config.json").is_file():
                return "hf"
            if is_run_folder(path):
                return "run"
            raise CheckpointError(
                path,
                "this folder is neither a Hugging Face model (no config.json) nor an rwkvkit training run",
            )
        check_regular_file(path, CheckpointError, "checkpoint file")
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(path, os_problem(e)) from None
    if len(head) < 8:
        raise CheckpointError(path, f"the file is only {len(head)} bytes long: it is empty or truncated")
    if struct.unpack("<I", head[:4])[0] == RWKVCPP_MAGIC:
        return "rwkvcpp"
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    if head[:4] == b"PK\x03\x04":
        return "pth"  # torch.save's zip format
    # safetensors before the pickle test: a header of 640 + k bytes starts with b"\x80\x02", too
    header_len = struct.unpack("<Q", head[:8])[0]
    if head[8:9] == b"{" and 0 < header_len < 100_000_000:
        return "safetensors"
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return "pth-legacy"  # torch.save's old pickle-stream format
    raise CheckpointError(
        path,
        "unrecognised file format (expected a BlinkDL .pth, a .safetensors file, an rwkv.cpp .bin, "
        "a llama.cpp .gguf or a Hugging Face folder)",
    )


def _torch_load(path: Path, legacy: bool) -> dict[str, Tensor]:
    if not legacy:
        verify_zip(path)  # mmap loading trusts the zip's offsets and never checks its CRC-32s
    try:
        # weights_only: a checkpoint is data; a pickle that tries to run code is refused, never run.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=not legacy)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            path,
            "refused to load: the pickle asks to run code or build objects other than tensors "
            f"(loaded with weights_only=True; nothing was executed). Detail: {str(e).splitlines()[0]}",
        ) from None
    except OSError as e:
        raise CheckpointError(path, os_problem(e)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(
            path, f"cannot read this PyTorch file; it is probably truncated or corrupt ({e})"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # Lightning-style wrapper
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(path, "the file does not hold a state dict of tensors")
    return obj


def _safetensors_load(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 (safe_open is no dict)
    except OSError as e:
        raise CheckpointError(path, os_problem(e)) from None
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(
            path, f"cannot read this safetensors file; it is probably truncated or corrupt ({e})"
        ) from None


def _metadata_overrides(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    """The settings an rwkvkit safetensors file's ``rwkvkit_config`` metadata records that the
    weights' shapes cannot tell (everything else is read off the shapes), type- and range-checked."""
    if "rwkvkit_config" not in meta:
        return {}
    where = f"{path} (metadata rwkvkit_config)"
    cfg = parse_json(meta["rwkvkit_config"], where, CheckpointError)
    if not isinstance(cfg, dict):
        raise CheckpointError(where, f"expected a JSON object, got {type(cfg).__name__}")
    out: dict[str, Any] = {}
    for key in ("layer_norm_eps", "ln_x_eps"):
        if key in cfg:
            out[key] = config_number(cfg, key, where, kind=float, low=0.0, high=1.0)
    if "n_head" in cfg:
        out["n_head"] = config_number(cfg, "n_head", where, kind=int, low=1)
    return out


# Sharded Hugging Face weights: model-00001-of-00003.safetensors, pytorch_model-00001-of-00002.bin
_SHARD = re.compile(r"^(.+)-(\d{5})-of-(\d{5})\.(safetensors|bin)$")


def hf_weight_files(path: Path) -> list[Path]:
    """The weight files of a Hugging Face folder: those its index names, else its one weights file,
    else a complete numbered set of shards. Anything else is ambiguous and refused with the list
    (a stray second file would otherwise be merged in)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            weight_map = read_json(path / index, CheckpointError).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(path / index, "has no weight_map of tensor name -> file name")
            names = sorted(set(weight_map.values()))
            bad = [n for n in names if Path(n).name != n or not (path / n).is_file()]
            if bad:
                raise CheckpointError(
                    path / index, f"names weight files that are not in the folder: {bad[:4]}"
                )
            return [path / n for n in names]
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(path.glob(pattern))
        if len(files) == 1:
            return files
        if files:
            shards = [_SHARD.match(f.name) for f in files]
            totals = {(m.group(1), m.group(3)) for m in shards if m}
            if all(shards) and len(totals) == 1 and int(next(iter(totals))[1]) == len(files):
                return files
            raise CheckpointError(
                path,
                f"holds several weight files and no index saying which belong to the model: "
                f"{[f.name for f in files]}; remove the ones that are not part of it",
            )
    raise CheckpointError(path, "no model.safetensors or pytorch_model.bin in this Hugging Face folder")


def _read_hf_folder(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    cfg = read_json(path / "config.json", CheckpointError, kind=object)
    if not isinstance(cfg, dict):
        raise CheckpointError(path / "config.json", "not a JSON object")
    model_type = cfg.get("model_type")
    if model_type not in ("rwkv", "rwkv5", "rwkv6", "rwkv7", None):
        raise CheckpointError(
            path,
            f"this Hugging Face folder holds a {model_type!r} model (config.json's model_type); RWKV "
            "folders have model_type 'rwkv' (RWKV-4), 'rwkv5', 'rwkv6' (RWKV/ remote-code folders) or "
            "'rwkv7' (flash-linear-attention)",
        )
    where = path / "config.json"  # its values checked before any weight is read
    read_overrides = fla.config_overrides_from_fla if model_type == "rwkv7" else hf.config_overrides_from_hf
    overrides = read_overrides(cfg, where)
    sd: dict[str, Tensor] = {}
    for f in hf_weight_files(path):  # sharded checkpoints: the shards together hold every key once
        part = _safetensors_load(f)[0] if f.suffix == ".safetensors" else _torch_load(f, legacy=False)
        twice = sorted(set(part) & set(sd))
        if twice:
            raise CheckpointError(f, f"repeats tensors another weight file of the folder holds: {twice[:4]}")
        sd.update(part)
    return sd, overrides


def read_tensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a .pth or .safetensors file (told apart by content), read without running code."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        return _safetensors_load(path)[0]
    if fmt in ("pth", "pth-legacy"):
        return _torch_load(path, legacy=fmt == "pth-legacy")
    raise CheckpointError(path, "expected a .pth or .safetensors file of tensors")


def read_run_checkpoint(path: Path) -> RawCheckpoint:
    """A run folder as a checkpoint: its newest weights, or for a LoRA run its base with the adapter
    merged, for a state-tuning run its base with the tuned state to load."""
    info = read_run_file(path)
    method = run_method(info)
    if method == "lora":
        return merged_checkpoint(read_checkpoint(tuned_base(path, info)), path / ADAPTER_DIR)
    if method == "state":
        if not (path / STATE_FILE).is_file():
            raise CheckpointError(
                path, f"this state-tuning run has saved no {STATE_FILE} yet (see --save-every)"
            )
        raw = read_checkpoint(tuned_base(path, info))
        raw.state_file = path / STATE_FILE
        return raw
    return read_checkpoint(latest_checkpoint(path))


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """Read any supported checkpoint into canonical (BlinkDL-named) form; a Hugging Face Hub reference
    (``hf://OWNER/REPO/FILE``, ``OWNER/REPO``: :mod:`rwkvkit.formats.hub`) is fetched into the Hub cache."""
    if hub.is_hub_reference(path):
        path = hub.resolve(path)  # type: ignore[arg-type]
    path = Path(path)
    fmt = sniff_format(path)
    overrides: dict[str, Any] = {}
    dtype = None
    if fmt == "rwkvcpp":
        header, sd = read_rwkvcpp(path)
        dtype = "fp16" if header.data_type_name == "FP16" else "fp32"
    elif fmt in ("pth", "pth-legacy"):
        sd = _torch_load(path, legacy=fmt == "pth-legacy")
        fmt = "pth"
    elif fmt == "safetensors":
        sd, meta = _safetensors_load(path)
        overrides = _metadata_overrides(path, meta)
    elif fmt == "hf":
        sd, overrides = _read_hf_folder(path)
    elif fmt == "gguf":
        sd, version, overrides = read_gguf(path)
        return RawCheckpoint(path, fmt, sd, version, overrides)
    else:  # a training run folder
        return read_run_checkpoint(path)
    if hf.is_hf_state_dict(sd):
        sd = hf.hf_to_blinkdl(sd, path)
    elif fla.is_fla_state_dict(sd):
        sd = fla.fla_to_blinkdl(sd, path)
    sd, time_state = split_time_state(sd)  # a model file with a tuned state merged in (RWKV-PEFT)
    try:
        version = detect_version(sd.keys())
    except UnsupportedVersionError as e:
        raise UnsupportedVersionError(path, e.problem) from None
    except RwkvkitError as e:
        raise CheckpointError(path, str(e)) from None
    if fmt == "rwkvcpp" and version == "5":
        # rwkv.cpp normalises RWKV-5's ln_x with eps 1e-5 (BlinkDL: 64e-5); its files' logits only
        # come out right with its own value (shared/fixtures/rwkv-cpp-tiny/README.md).
        overrides["ln_x_eps"] = RWKVCPP_V5_LN_X_EPS
    return RawCheckpoint(
        path, fmt, sd, version, overrides, time_state=time_state, dtype=dtype or stored_dtype(sd)
    )


def stored_dtype(sd: dict[str, Tensor]) -> str:
    """The dtype most of a state dict's numbers are stored in, by name ("fp32", "fp16", "bf16").
    BlinkDL files keep a few vectors in float32 beside 16-bit matrices: the matrices decide."""
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    count: dict[str, int] = {}
    for t in sd.values():
        name = names.get(t.dtype, "fp32")
        count[name] = count.get(name, 0) + t.numel()
    return max(count, key=count.__getitem__) if count else "fp32"


def all_finite(t: Tensor, block: int = 1 << 20) -> bool:
    """Whether a tensor holds no NaN or inf, without a second copy of the weights.

    Any NaN or inf makes the sum NaN or inf, so a finite sum proves the tensor finite, at the cost
    of one streaming reduction. Only a sum that overflowed needs the exact check, which runs in
    blocks: torch.isfinite on a whole embedding allocates temporaries larger than the tensor.
    """
    if torch.isfinite(t.sum()):
        return True
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + block]).all()) for i in range(0, flat.numel(), block))


def _fit_to_model(
    sd: dict[str, Tensor], model: nn.Module, path: Path, dtype: torch.dtype
) -> dict[str, Tensor]:
    """Check names, shapes and values against the model; reshape BlinkDL's variable-shape vectors."""
    expected = {k: (tuple(v.shape), v) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing:
        raise CheckpointError(path, f"missing keys: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if extra:
        raise CheckpointError(path, f"unexpected keys: {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    out = {}
    for name, (shape, _) in expected.items():
        t = sd[name]
        if tuple(t.shape) != shape:
            # Vectors such as time_mix_k or x_r are (1, 1, C) in some trainers' files and (C,) in
            # others' (rwkv.cpp squeezes them): differing only in size-1 dimensions is the same tensor.
            if [d for d in t.shape if d != 1] == [d for d in shape if d != 1]:
                t = t.reshape(shape)
            else:
                raise CheckpointError(
                    path, f"{name} has shape {tuple(t.shape)}, but the other tensors imply {shape}"
                )
        if not t.is_floating_point():
            raise CheckpointError(path, f"{name} holds {t.dtype}, not floating-point weights")
        if not all_finite(t):
            raise CheckpointError(path, f"{name} contains NaN or infinite values")
        target = torch.float32 if name.rsplit(".", 1)[-1] in FP32_PARAMS else dtype
        out[name] = t.to(target)
    return out


def model_config(raw: RawCheckpoint) -> Any:
    """The model config a read checkpoint implies: its shapes, plus the settings it records that
    this version's config has (a GPT's n_head means nothing to an RWKV)."""
    config_cls, _ = model_classes(raw.version, raw.path)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    overrides = {k: v for k, v in raw.config_overrides.items() if k in fields}
    try:
        return config_cls.from_state_dict(raw.state_dict, **overrides)
    except RwkvkitError as e:
        raise CheckpointError(raw.path, str(e)) from None
    except (KeyError, IndexError) as e:
        raise CheckpointError(raw.path, f"cannot infer the model's shape: missing or odd key {e}") from None
    except (ValueError, ZeroDivisionError, RuntimeError) as e:
        raise CheckpointError(raw.path, f"cannot infer the model's shape: {e}") from None


def build_model(
    raw: RawCheckpoint, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> nn.Module:
    """Make the model for a read checkpoint without allocating random weights first."""
    config = model_config(raw)
    _, model_cls = model_classes(raw.version, raw.path)
    with torch.device("meta"):
        model = model_cls(config)
    tensors = _fit_to_model(raw.state_dict, model, raw.path, dtype)
    model.load_state_dict(tensors, assign=True)
    model.source = raw  # type: ignore[assignment]  # where the weights came from, for state files and convert
    raw.state_dict = {}  # the model owns the tensors now
    model = model.to(resolve_device(device)).eval()
    if raw.time_state:
        model.default_state = to_state(raw.time_state, model, raw.path)  # type: ignore[assignment]
    if raw.state_file is not None:
        from .statefile import load_initial_state  # statefile reads its files with this module

        model.default_state = load_initial_state(raw.state_file, model)  # type: ignore[assignment]
    return model


def merged_checkpoint(raw: RawCheckpoint, adapter: str | Path) -> RawCheckpoint:
    """The checkpoint with a LoRA adapter (a folder or a LoRA run) merged into its weights, in
    float32: what ``load_model(BASE, adapter=...)`` builds from and ``rwkvkit convert RUN`` writes."""
    from .lora import apply_adapter  # imports peft, which only adapters need

    model = apply_adapter(build_model(raw), adapter, merge=True)
    return replace(raw, state_dict={k: v.detach() for k, v in model.state_dict().items()})


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    quantize: str | None = None,
    adapter: str | Path | None = None,
    state: str | Path | None = None,
) -> nn.Module:
    """Load any supported RWKV checkpoint, ready to call as ``logits, state = model(tokens, state)``.

    The format (BlinkDL .pth or .safetensors, Hugging Face folder, rwkv.cpp .bin, llama.cpp .gguf)
    and the RWKV version are detected from the content. ``path`` may also name a model on the
    Hugging Face Hub: ``"hf://OWNER/REPO/FILE"``, ``"hf://OWNER/REPO@REVISION/FILE"`` or a repository
    id ``"OWNER/REPO"`` that is no local path (fetched into, or found in, the Hub cache). ``dtype`` is the weights' dtype (the WKV state and the
    logits stay float32). ``quantize="int8"`` stores the matrices as weight-only int8 (per-output
    channel scales); the rest keeps ``dtype``. The model comes back with the fast inference layers
    of :mod:`rwkvkit.inference` in place (same numbers as the plain modules, within the tolerances
    tests/test_inference.py states), in eval mode, and with ``requires_grad`` off on every parameter:
    calls build no autograd graph, so outputs can go straight to ``.numpy()``. To train a loaded
    model, call ``model.train().requires_grad_(True)`` first.

    Fine-tuned work: ``adapter`` is a LoRA adapter folder (PEFT's layout) or a LoRA run, merged
    into the weights in float32 before they take ``dtype``; ``state`` is a state file (rwkvkit's,
    or an official ``time_state`` .pth) or a state-tuning run, whose state becomes the model's
    initial state (``model.initial_state(batch)``, what every call without a state starts from).
    Both are refused when they were made for another model. A fine-tuning run folder as ``path``
    loads its base with its adapter or state.
    """
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise RwkvkitError(f"unknown quantize={quantize!r}; choose one of {QUANTIZE_MODES} or None")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise RwkvkitError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    device = resolve_device(device)  # before reading a large file for a device that is not there
    raw = read_checkpoint(path)
    if adapter is not None:
        raw = merged_checkpoint(raw, adapter)
    if state is not None:
        raw.state_file = Path(state)  # a state file or a state-tuning run
    model = build_model(raw, device=device, dtype=dtype)
    return optimize_for_inference(model, quantize=quantize).requires_grad_(False)


# --------------------------------------------------------------------------------------------
# The tokenizer a checkpoint was trained with


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, from its JSON header alone."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(n, 100_000_000)))
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        return {k: v for k, v in meta.items() if isinstance(v, str)} if isinstance(meta, dict) else {}
    except (OSError, ValueError, struct.error, RecursionError):
        return {}


def tokenizer_name_for_model(model: nn.Module) -> str:
    """A checkpoint's tokenizer: what its metadata names, else what its vocabulary size implies."""
    return tokenizer_name_for_source(getattr(model, "source", None), model.config.vocab_size)  # type: ignore[attr-defined]


def tokenizer_name_for_source(source: RawCheckpoint | None, vocab: int) -> str:
    """The tokenizer of a checkpoint read from ``source`` whose embedding has ``vocab`` rows: a
    safetensors file's metadata, a GGUF file's own vocabulary ("world" when it is the bundled one),
    else what the vocabulary size implies."""
    if source is not None and source.format == "safetensors":
        meta = safetensors_metadata(source.path)
        for key in ("rwkvkit_tokenizer", "tokenizer"):
            if meta.get(key):
                return meta[key]
    if source is not None and source.format == "gguf":
        vocabulary = load_tokenizer(source.path).vocab  # type: ignore[attr-defined]
        return "world" if vocabulary == load_tokenizer("world").vocab else str(source.path)  # type: ignore[attr-defined]
    name = tokenizer_name_for_vocab_size(vocab)
    if name is None:
        raise TokenizerError(
            f"cannot tell the tokenizer of a model with a vocabulary of {vocab} tokens; "
            'pass --tokenizer ("world", "20b", "byte" or a vocabulary file)'
        )
    return name


def tokenizer_for_model(model: nn.Module, name: str | None = None) -> Tokenizer:
    """The tokenizer ``name`` (default: the checkpoint's own), checked to fit the model's vocabulary."""
    tokenizer = load_tokenizer(name or tokenizer_name_for_model(model))
    check_vocab_fits(tokenizer, model)
    return tokenizer
