"""State files: a recurrent state saved to safetensors, with who it belongs to.

An RWKV state is only meaningful for the weights that produced it, so the file records the
model's identity and loading it into another model is refused. The identity is cheap to
compute and independent of the weights' dtype and device:

- the RWKV version and every parameter's name and shape (hashed);
- a few sampled parameter values (4 per tensor, at fixed positions), compared on load with a
  relative tolerance of 1e-2, so the same checkpoint loaded in fp32, fp16 or bf16 matches
  (bf16 rounds by up to 2^-8 relative) while different weights practically never do.

The file holds the state's tensors under ``state.<field>``, optionally the logits after the last
consumed token (``logits``: what the next token is drawn from, so a saved prompt can be
continued without feeding anything) and metadata: format tag, RWKV version, state class,
model config, identity, number of tokens consumed, optional tokenizer name. Writes are atomic.

:func:`load_state` also reads the official layout of a tuned state (RWKV-PEFT's
``blocks.N.att.time_state`` tensors, in a .pth or .safetensors of their own;
:mod:`rwkvkit.formats.time_state`), which records no model identity: only its shapes are checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .errors import StateError
from .fileio import atomic_write, check_regular_file, os_problem, parse_json
from .formats import time_state
from .formats.run import STATE_FILE, is_run_folder
from .state import RecurrentState

FORMAT = "rwkvkit-state"
FORMAT_VERSION = "1"
SAMPLES_PER_TENSOR = 4
SAMPLE_RTOL = 1e-2  # bf16 keeps 8 significant bits: a relative error of at most 2^-8 ~ 0.4%
SAMPLE_ATOL = 1e-6  # for sampled values that are (close to) zero


@dataclasses.dataclass
class ModelIdentity:
    """What a state file remembers about the model that made the state."""

    version: str
    shapes_sha256: str  # hash of every parameter's name and shape, in order
    samples: list[float]  # SAMPLES_PER_TENSOR values per parameter, as float32
    config: dict[str, Any]

    @classmethod
    def of(cls, model: nn.Module) -> ModelIdentity:
        config = model.config  # type: ignore[attr-defined]
        h = hashlib.sha256()
        samples: list[float] = []
        for name, t in model.state_dict().items():
            h.update(f"{name}:{tuple(t.shape)};".encode())
            flat = t.detach().reshape(-1)
            n = flat.numel()
            idx = torch.tensor([i * n // SAMPLES_PER_TENSOR for i in range(SAMPLES_PER_TENSOR)])
            samples += flat[idx.to(flat.device)].float().cpu().tolist()
        return cls(str(config.version), h.hexdigest(), samples, config.to_dict())

    def mismatch(self, other: ModelIdentity) -> str | None:
        """Why ``other`` is a different model, or None if it is the same one."""
        if self.version != other.version:
            return f"it was made by an RWKV-{self.version} model, this is an RWKV-{other.version} model"
        if self.shapes_sha256 != other.shapes_sha256:
            theirs = {k: v for k, v in self.config.items() if k != "chunk_len"}
            ours = {k: v for k, v in other.config.items() if k != "chunk_len"}
            return f"it was made by a model of another shape ({theirs}; this model: {ours})"
        a = torch.tensor(self.samples, dtype=torch.float32)
        b = torch.tensor(other.samples, dtype=torch.float32)
        if a.shape != b.shape or not torch.allclose(a, b, rtol=SAMPLE_RTOL, atol=SAMPLE_ATOL):
            return "it was made by a model of the same shape but different weights"
        return None


@dataclasses.dataclass
class SavedState:
    """A state read from a file, with what the file says about it."""

    state: RecurrentState
    logits: Tensor | None  # (B, V) float32 after the last consumed token, if saved
    tokens_consumed: int
    identity: ModelIdentity | None  # None for an official time_state file, which records none
    tokenizer: str | None = None
    extra: dict[str, str] = dataclasses.field(default_factory=dict)


def save_state(
    path: str | Path,
    state: RecurrentState,
    model: nn.Module,
    *,
    tokens_consumed: int,
    logits: Tensor | None = None,
    tokenizer: str | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write ``state`` (made by ``model`` after ``tokens_consumed`` tokens) to ``path`` atomically."""
    path = Path(path)
    identity = ModelIdentity.of(model)
    tensors = {f"state.{k}": v.detach().contiguous().cpu() for k, v in state.tensors().items()}
    if logits is not None:
        tensors["logits"] = logits.detach().float().reshape(state.batch_size, -1).contiguous().cpu()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rwkv_version": identity.version,
        "state_class": type(state).__name__,
        "model_config": json.dumps(identity.config),
        "model_shapes_sha256": identity.shapes_sha256,
        "model_samples": json.dumps(identity.samples),
        "tokens_consumed": str(int(tokens_consumed)),
        **({"tokenizer": tokenizer} if tokenizer else {}),
        **{f"extra.{k}": str(v) for k, v in (extra or {}).items()},
    }
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))
    return path


def _state_class(model: nn.Module) -> type[RecurrentState]:
    init = getattr(model, "initial_state", None)
    if init is None:
        raise StateError(f"{type(model).__name__} has no initial_state(); it is not an rwkvkit model")
    return type(init(1))


def load_state(path: str | Path, model: nn.Module) -> SavedState:
    """Read a state file for ``model``; refuse it with a :class:`StateError` if another model made it.

    The tensors are moved to the model's device; the state stays float32 whatever the weights' dtype.
    """
    path = check_regular_file(path, StateError, "state file")
    with open(path, "rb") as f:
        head = f.read(9)
    if time_state.is_torch_file(head):  # a torch.save file: an official state
        return _load_official(path, model)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except OSError as e:
        raise StateError(f"{path}: {os_problem(e)}") from None
    except (SafetensorError, ValueError) as e:
        raise StateError(
            f"{path}: not a readable safetensors state file; it is truncated or corrupt ({e})"
        ) from None
    if meta.get("format") != FORMAT and tensors and all(time_state.is_time_state_key(k) for k in tensors):
        return _load_official(path, model, tensors)
    if meta.get("format") != FORMAT:
        raise StateError(
            f"{path}: this safetensors file is not an rwkvkit state file (no format={FORMAT!r} in its "
            "metadata); a model checkpoint goes to --model, a state file to --state"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise StateError(
            f"{path}: state file format version {meta.get('format_version')!r}; this rwkvkit reads "
            f"version {FORMAT_VERSION} (upgrade rwkvkit or re-create the state)"
        )
    damaged = f"{path}: the state file's metadata is incomplete or damaged"
    try:
        samples = parse_json(meta["model_samples"], "model_samples", StateError)
        config = parse_json(meta["model_config"], "model_config", StateError)
        if not isinstance(samples, list) or not isinstance(config, dict):
            raise ValueError("model_samples must be a list and model_config an object")
        saved = ModelIdentity(
            version=meta["rwkv_version"],
            shapes_sha256=meta["model_shapes_sha256"],
            samples=[float(x) for x in samples],
            config=config,
        )
        tokens_consumed = int(meta["tokens_consumed"])
    except StateError as e:
        raise StateError(f"{damaged} ({e})") from None
    except (KeyError, ValueError, TypeError) as e:
        raise StateError(f"{damaged} ({e})") from None
    if tokens_consumed < 0:
        raise StateError(f"{damaged} (tokens_consumed is {tokens_consumed}, below 0)")
    why = saved.mismatch(ModelIdentity.of(model))
    if why is not None:
        raise StateError(
            f"{path}: this state belongs to another model: {why}. Load it with the model that saved it"
        )
    cls = _state_class(model)
    if meta.get("state_class") != cls.__name__:
        raise StateError(f"{path}: holds a {meta.get('state_class')}, this model uses {cls.__name__}")
    device = next(model.parameters()).device
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise StateError(f"{path}: {name} holds {t.dtype}, not floating-point numbers")
        if not bool(torch.isfinite(t).all()):
            bad = "NaN" if bool(torch.isnan(t).any()) else "infinite"
            raise StateError(
                f"{path}: {name} holds {bad} values; the state is broken and cannot be continued"
            )
    fields = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    # The batch size comes from the file: checked before a state of that batch is made to compare.
    if (
        any(t.dim() < 2 or t.numel() == 0 for t in fields.values())
        or len({t.shape[1] for t in fields.values()}) > 1
    ):
        raise StateError(f"{path}: the state tensors are empty or disagree on the batch size (dimension 1)")
    fields = {k: v.to(device) for k, v in fields.items()}
    state = cls.from_tensors(fields)
    expected = model.initial_state(state.batch_size).tensors()  # type: ignore[operator]
    for name, t in state.tensors().items():
        if t.shape != expected[name].shape:
            raise StateError(
                f"{path}: state tensor {name} has shape {tuple(t.shape)}, expected {tuple(expected[name].shape)}"
            )
    logits = tensors.get("logits")
    return SavedState(
        state=state,
        logits=None if logits is None else logits.to(device),
        tokens_consumed=tokens_consumed,
        identity=saved,
        tokenizer=meta.get("tokenizer"),
        extra={k.removeprefix("extra."): v for k, v in meta.items() if k.startswith("extra.")},
    )


def _load_official(path: Path, model: nn.Module, tensors: dict[str, Tensor] | None = None) -> SavedState:
    """An official tuned state (``blocks.N.att.time_state`` tensors), as a batch-1 state for ``model``."""
    if tensors is None:
        tensors = time_state.read_file(path)
    if not tensors or not all(time_state.is_time_state_key(k) for k in tensors):
        raise StateError(
            f"{path}: neither an rwkvkit state file nor an official state file (blocks.N.att.time_state "
            "tensors); a model checkpoint goes to --model, a state file to --state"
        )
    state = time_state.to_state(tensors, model, path)
    return SavedState(
        state=state, logits=None, tokens_consumed=0, identity=None, extra={"kind": "time_state"}
    )


def load_initial_state(path: str | Path, model: nn.Module) -> RecurrentState:
    """A state file's state (or a state-tuning run's) as ``model``'s initial state: one row, made
    by this model (or official)."""
    if is_run_folder(Path(path)):
        path = Path(path) / STATE_FILE
    saved = load_state(path, model)
    if saved.state.batch_size != 1:
        raise StateError(f"{path}: holds {saved.state.batch_size} states; an initial state is one")
    return saved.state
