"""Fine-tuning a trained model: the whole of it, a LoRA adapter, or its initial state.

``rwkvkit finetune`` runs the training loop (:mod:`.loop`) on one of these trainees:

- ``full``: every weight, as ``rwkvkit train`` trains (checkpoints are whole models);
- ``lora``: low-rank adapters on the projections, through peft (:mod:`rwkvkit.lora`); the base
  is frozen, so neither its gradients nor optimizer state exist;
- ``state``: only the recurrent state every sequence starts from (RWKV-PEFT's state tuning): for
  RWKV-5/6/7 each layer's WKV matrix state, for RWKV-4 each layer's WKV sums. The tuned state is
  a few hundred KB that changes what the model does at no cost when it runs.

The base is anything ``load_model`` reads (a LoRA or state run too, so tuning stacks); the run
records its path and identity, and ``load_model(RUN)`` loads the base with what was tuned.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import build_model, read_checkpoint, read_tensors, tokenizer_name_for_model
from ..defaults import default_model_path
from ..errors import CheckpointError, RwkvkitError
from ..fileio import atomic_write
from ..formats import time_state
from ..formats.run import ADAPTER_DIR, OFFICIAL_STATE_FILE, STATE_FILE, is_run_folder, read_run_file
from ..lora import adapter_tensors, add_lora, load_adapter_tensors, save_adapter
from ..state import RecurrentState
from ..statefile import ModelIdentity, save_state
from .config import METHODS, FinetuneConfig
from .data import TokenData
from .loop import train
from .trainee import Trainee

# The state fields state tuning learns, per RWKV version; the others (token shift) stay zero.
# RWKV-4's WKV state is two sums and their common log-scale offset (num e^max, den e^max): the
# offset is learned too, or the sums could only grow additively, far too slowly to matter next to
# e^k of the tokens that follow (measured: a chat style was not learned without it).
TUNED_FIELDS = {"4": ("wkv_num", "wkv_den", "wkv_max"), "5": ("wkv",), "6": ("wkv",), "7": ("wkv",)}


def base_path(cfg: FinetuneConfig) -> tuple[Path, bool]:
    """The base model's path, and whether it is the bundled model."""
    if cfg.model:
        return Path(cfg.model).resolve(), False
    path = default_model_path()
    if path is None:
        raise RwkvkitError(
            "no --model given and this install has no bundled model; pass the base with --model"
        )
    return path, True


def load_base(cfg: FinetuneConfig, data: TokenData) -> tuple[nn.Module, dict[str, Any]]:
    """The base model in float32 on the CPU (plain layers, trainable), and what the run file records
    about it; refused when the data was tokenized for another vocabulary."""
    path, bundled = base_path(cfg)
    model = build_model(read_checkpoint(path))
    tokenizer = tokenizer_name_for_model(model)
    if data.manifest["tokenizer"] != tokenizer or int(data.manifest["vocab_size"]) > model.config.vocab_size:
        raise RwkvkitError(
            f"{cfg.data} was tokenized with {data.manifest['tokenizer']!r}, but {path} uses {tokenizer!r}; "
            f"prepare the data again with --tokenizer {tokenizer}"
        )
    identity = ModelIdentity.of(model)
    info = {"path": str(path), "bundled": bundled, "identity": dataclasses.asdict(identity)}
    return model, info


def check_same_base(cfg: FinetuneConfig, run_info: dict[str, Any], base: dict[str, Any]) -> None:
    """On resume: the base must be the one the run started from."""
    saved = run_info.get("base", {}).get("identity")
    if saved is None:
        return
    why = ModelIdentity(**saved).mismatch(ModelIdentity(**base["identity"]))
    if why is not None:
        raise RwkvkitError(f"{cfg.out} was tuned from another base model than {base['path']}: {why}")


class FullTuning(Trainee):
    """Every weight of the base, trained; checkpoints are whole models (``rwkvkit train``'s)."""


@dataclasses.dataclass
class LoraTuning(Trainee):
    """A LoRA adapter on the frozen base; checkpoints hold the adapter, ``adapter/`` its PEFT layout."""

    peft_model: Any = None
    base: ModelIdentity | None = None

    def tensors(self) -> dict[str, Tensor]:
        return adapter_tensors(self.model)

    def load(self, path: Path) -> None:
        load_adapter_tensors(self.model, read_tensors(path), path)

    def export(self, out: Path) -> None:
        assert self.base is not None
        save_adapter(self.peft_model, out / ADAPTER_DIR, self.base)


class LearnedState(nn.Module):
    """The base model with a learned initial state: the state's tuned fields are this module's
    parameters, the model (frozen) its child, and the model's ``default_state`` is made of them,
    so every call without a state (the loop's first segment, validation, samples) starts there."""

    def __init__(self, model: nn.Module, start: RecurrentState, fields: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.learned = nn.ParameterDict({n: nn.Parameter(getattr(start, n).clone()) for n in fields})
        for name, t in start.tensors().items():
            if name not in fields:
                self.register_buffer(name, t.clone())
        self.state_cls = type(start)
        self.install()

    def state(self) -> RecurrentState:
        return self.state_cls(
            **{n: self.learned[n] if n in self.learned else getattr(self, n) for n in self.fields}
        )

    @property
    def fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.state_cls)]

    def install(self) -> None:
        self.model.default_state = self.state()  # type: ignore[assignment]

    def _apply(self, fn: Any, recurse: bool = True) -> LearnedState:
        out = super()._apply(fn, recurse)
        self.install()  # buffers are new tensors after .to(); the state must be made of them
        return out

    def forward(self, tokens: Tensor, state: RecurrentState | None = None, **kw: Any) -> tuple[Tensor, Any]:
        return self.model(tokens, state, **kw)


@dataclasses.dataclass
class StateTuning(Trainee):
    """The initial state, learned; checkpoints hold it, beside them ``state.safetensors`` and (for
    RWKV-5/6/7) ``state.pth`` in the official layout."""

    learned: LearnedState | None = None

    @property
    def module(self) -> nn.Module:
        assert self.learned is not None
        return self.learned

    def tensors(self) -> dict[str, Tensor]:
        assert self.learned is not None
        return {f"state.{n}": p.detach() for n, p in self.learned.learned.items()}

    def load(self, path: Path) -> None:
        assert self.learned is not None
        saved = read_tensors(path)
        with torch.no_grad():
            for n, p in self.learned.learned.items():
                if f"state.{n}" not in saved or saved[f"state.{n}"].shape != p.shape:
                    raise CheckpointError(path, f"no state.{n} of shape {tuple(p.shape)} in this checkpoint")
                p.copy_(saved[f"state.{n}"])

    def after_step(self) -> None:
        assert self.learned is not None
        if "wkv_den" in self.learned.learned:  # RWKV-4: a sum of e^k, never negative
            with torch.no_grad():
                self.learned.learned["wkv_den"].clamp_(min=0)

    def export(self, out: Path) -> None:
        assert self.learned is not None
        state = self.learned.state()
        save_state(
            out / STATE_FILE, state, self.model, tokens_consumed=0, extra={"kind": "tuned initial state"}
        )
        version = str(self.model.config.version)  # type: ignore[union-attr]
        if version in time_state.VERSIONS:
            tensors = time_state.from_state(state, version)
            atomic_write(out / OFFICIAL_STATE_FILE, lambda p: torch.save(tensors, p))


def state_start(model: nn.Module) -> tuple[RecurrentState, tuple[str, ...]]:
    """Where state tuning starts (the base's own initial state: zeros, or one it was tuned to) and
    which fields it learns. RWKV-4's empty WKV sums start at offset 0 rather than -inf, which is the
    same state (the sums are zero) but lets gradients reach them."""
    version = str(getattr(getattr(model, "config", None), "version", ""))
    if version not in TUNED_FIELDS:
        raise RwkvkitError(f"state tuning needs an RWKV-4, 5, 6 or 7 model; this is {type(model).__name__}")
    start = model.initial_state(1).detach()  # type: ignore[operator]
    if version == "4" and model.default_state is None:  # type: ignore[union-attr]
        start = dataclasses.replace(start, wkv_max=torch.zeros_like(start.wkv_max))  # type: ignore[call-arg]
    return start, TUNED_FIELDS[version]


def make_trainee(cfg: FinetuneConfig, data: TokenData) -> Trainee:
    """The base model, loaded, set up for ``cfg.method``."""
    if cfg.method not in METHODS:
        raise RwkvkitError(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    model, base = load_base(cfg, data)
    if cfg.resume and is_run_folder(Path(cfg.out)):
        check_same_base(cfg, read_run_file(cfg.out), base)
    model_config = {k: v for k, v in model.config.to_dict().items() if k != "chunk_len"}  # type: ignore[operator]
    arch = f"rwkv{model.config.version}" if model.config.version != "gpt" else "gpt"  # type: ignore[union-attr]
    info: dict[str, Any] = {"method": cfg.method, "base": base}
    trainee: Trainee
    if cfg.method == "full":
        trainee = FullTuning(model, model_config, arch, info)
    elif cfg.method == "lora":
        peft_model = add_lora(model, cfg.lora_settings())
        trainee = LoraTuning(model, model_config, arch, info, peft_model, ModelIdentity(**base["identity"]))
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        start, fields = state_start(model)
        trainee = StateTuning(model, model_config, arch, info, LearnedState(model, start, fields))
    trainee.run_info["n_trainable"] = sum(p.numel() for g in trainee.param_groups(0.0) for p in g["params"])
    return trainee


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run (or resume) a fine-tune; returns the loop's summary."""
    return train(cfg, make_trainee)  # type: ignore[arg-type]
