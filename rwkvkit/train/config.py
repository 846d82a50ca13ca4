"""What a training run is asked to do: one dataclass, whose fields are ``rwkvkit train``'s flags,
and its fine-tuning sibling, whose fields are ``rwkvkit finetune``'s."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..formats.run import RUN_FILE, read_run_file, run_method
from ..lora import DEFAULT_TARGETS, LoraSettings

# rwkvkit-run-1 files named two fields otherwise: its "chunk_len" was the BPTT segment and its
# "wkv_chunk" the WKV chunk. Mapped together, so one old name never lands on the other's field.
_RUN1_NAMES = {"chunk_len": "bptt_len", "wkv_chunk": "chunk_len"}

# What a resumed run takes from the command line rather than from the run folder: how long it
# runs and how it reports, never the model or the data stream. (The data folder may be given again,
# e.g. after moving it; the trainer checks it holds the run's tokens.)
KEEP_ON_RESUME = (
    "steps",
    "stop_after",
    "resume",
    "overwrite",
    "progress",
    "threads",
    "device",
    "save_every",
    "eval_every",
)
DECAYS = ("cosine", "exp")
PRECISIONS = ("auto", "fp32", "bf16")
# field -> the least value it may take (every other int field must be >= 1)
_MAY_BE_ZERO = (
    "seed",
    "bptt_len",
    "warmup",
    "save_every",
    "keep",
    "eval_every",
    "sample_len",
    "stop_after",
    "threads",
)


@dataclasses.dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "rwkv4"  # or "rwkv7", or "gpt" (train/arch.py)
    n_layer: int = 4
    n_embd: int = 256
    ffn_mult: float = 4.0  # RWKV channel-mixing width = ffn_mult * n_embd
    n_head: int = 4  # GPT only
    head_size: int = 64  # RWKV-7 only: channels per head (every released RWKV-7 uses 64)
    ctx_len: int = 256  # tokens per training window
    bptt_len: int = (
        0  # truncated-BPTT segment: the state is carried (and detached) between them; 0 = the whole window
    )
    chunk_len: int = 32  # tokens per chunk inside the parallel WKV (speed only)
    batch_size: int = 8  # windows per rank per micro-batch
    grad_accum: int = 1
    lr: float = 6e-4
    lr_final: float = 6e-5
    warmup: int = 50
    decay: str = "cosine"  # or "exp"
    steps: int = 1000
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    seed: int = 0
    precision: str = "auto"  # fp32, bf16, auto (bf16 where the hardware has it)
    save_every: int = 100
    keep: int = 3  # checkpoints kept
    eval_every: int = 100
    eval_windows: int = 64
    log_every: int = 10
    sample_len: int = 200
    sample_prompt: str = "\n"
    stop_after: int = 0  # stop after this many steps in this invocation (0: run to --steps)
    resume: bool = False
    overwrite: bool = False  # start again in a run folder that holds a run, deleting its checkpoints
    device: str = "auto"
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # JSON and argparse give lists
        self.check()

    def check(self) -> None:
        """Every field's type and range, as the flag it is: a run that cannot work is refused
        before it starts (``--steps 0``, ``--grad-accum 0``, ``--lr -1``, ``--decay bogus``, ...)."""

        def refuse(name: str, rule: str) -> ConfigError:
            flag = "--" + name.replace("_", "-")
            return ConfigError(f"{flag} must be {rule}, got {getattr(self, name)!r}")

        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if kind.endswith(" | None"):  # finetune's lr: None until its method's default is taken
                if value is None:
                    continue
                kind = kind.removesuffix(" | None")
            if kind == "int":
                least = 0 if f.name in _MAY_BE_ZERO else 1
                if not isinstance(value, int) or isinstance(value, bool) or value < least:
                    raise refuse(f.name, f"an integer >= {least}")
            elif kind == "float":
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    raise refuse(f.name, "a finite number")
            elif kind == "bool" and not isinstance(value, bool):
                raise refuse(f.name, "true or false")
            elif kind == "str" and not isinstance(value, str):
                raise refuse(f.name, "a string")
        for name in ("lr", "ffn_mult"):
            if getattr(self, name) <= 0:
                raise refuse(name, "> 0")
        for name in ("lr_final", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise refuse(name, ">= 0")
        if len(self.betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.betas
        ):
            raise refuse("betas", "two numbers in [0, 1)")
        if self.seed >= 2**63:
            raise refuse("seed", "below 2**63")
        if self.decay not in DECAYS:
            raise refuse("decay", f"one of {', '.join(DECAYS)}")
        if self.precision not in PRECISIONS:
            raise refuse("precision", f"one of {', '.join(PRECISIONS)}")
        if self.bptt_len and self.ctx_len % self.bptt_len:
            raise ConfigError(f"--ctx-len {self.ctx_len} must be a multiple of --bptt-len {self.bptt_len}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues a run and --overwrite deletes it: pass one of them")

    @property
    def segment(self) -> int:
        """Tokens per truncated-BPTT segment (the whole window when bptt_len is 0)."""
        return self.bptt_len or self.ctx_len

    def saved(self) -> dict[str, Any]:
        """What the run file records (``rwkvkit-run.json``'s "train")."""
        return dataclasses.asdict(self)

    @classmethod
    def from_saved(cls, run_info: dict[str, Any], where: Any = RUN_FILE) -> TrainConfig:
        """The config a run folder's ``rwkvkit-run.json`` recorded, older key names mapped, every
        value checked (``where``: the file, for the error). Keys this version does not know are
        ignored; missing ones take their defaults."""
        saved = run_info.get("train")
        if not isinstance(saved, dict):
            raise CheckpointError(where, 'has no "train" object: not a run file this rwkvkit can resume')
        if run_info.get("format") == "rwkvkit-run-1":
            saved = {_RUN1_NAMES.get(k, k): v for k, v in saved.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in saved.items() if k in known})
        except (ConfigError, TypeError) as e:
            raise CheckpointError(where, f"holds a training config that cannot be used: {e}") from None


# TrainConfig's fields that describe a model to build: a fine-tune takes its model from the base.
ARCH_FIELDS = ("arch", "n_layer", "n_embd", "ffn_mult", "n_head", "head_size", "chunk_len")
METHODS = ("lora", "state", "full")
# (lr, lr_final) per method when --lr is not given. State tuning's are RWKV-PEFT's: a state entry
# may move by ~1 per step (Adam), as its values are of the order of the keys times the values.
METHOD_LR = {"lora": (2e-4, 2e-5), "state": (1.0, 1e-2), "full": (1e-5, 1e-6)}


@dataclasses.dataclass
class FinetuneConfig(TrainConfig):
    """``rwkvkit finetune``: the training loop's settings (TrainConfig's, less the architecture,
    which the base model fixes), the base model, the method and LoRA's settings."""

    method: str = "lora"  # lora, state or full
    model: str = ""  # the base: any checkpoint load_model reads ("" = the bundled model)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = ",".join(DEFAULT_TARGETS)  # comma-separated module names
    # Fine-tuning's own defaults for the loop's settings
    lr: float | None = None  # type: ignore[assignment]  # None: METHOD_LR's
    lr_final: float | None = None  # type: ignore[assignment]  # None: lr times METHOD_LR's ratio
    warmup: int = 10
    steps: int = 200
    weight_decay: float = 0.0
    save_every: int = 50
    eval_every: int = 50

    def __post_init__(self) -> None:
        if self.method in METHOD_LR:
            lr, lr_final = METHOD_LR[self.method]
            if self.lr is None:
                self.lr = lr
            if self.lr_final is None:  # the method's ratio of final to peak rate
                self.lr_final = self.lr * lr_final / lr
        super().__post_init__()
        if self.method == "lora":
            self.lora_settings()  # refuse bad LoRA settings before anything is loaded

    def lora_settings(self) -> LoraSettings:
        targets = tuple(t.strip() for t in self.lora_targets.split(","))
        return LoraSettings(self.lora_rank, self.lora_alpha, self.lora_dropout, targets)

    def saved(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ARCH_FIELDS}


def config_from_flags(flags: dict[str, Any], cls: type[TrainConfig] = TrainConfig) -> TrainConfig:
    """What ``rwkvkit train`` runs: the flags given on the command line over the defaults, or, with
    ``--resume``, over the run's saved config, read first. Only the flags of KEEP_ON_RESUME (and
    --data, for a moved data folder) may change on resume; any other flag given with a value that
    contradicts the saved run is an error naming both values."""
    if not flags.get("resume"):
        if "data" not in flags:
            raise ConfigError("--data is required (only --resume reads it from the run folder)")
        return cls(**flags)
    out = flags["out"]
    info = read_run_file(out)
    check_resume_method(info, flags.get("method") if cls is not TrainConfig else None, out)
    saved = cls.from_saved(info, Path(out) / RUN_FILE)
    clashes = [
        f"--{k.replace('_', '-')} {_show(v)} contradicts the run's saved {_show(getattr(saved, k))}"
        for k, v in flags.items()
        if k not in (*KEEP_ON_RESUME, "out", "data") and _normal(v) != _normal(getattr(saved, k))
    ]
    if clashes:
        raise ConfigError(
            f"{out}: " + "; ".join(clashes) + ". Drop these flags to continue the run as it was, or "
            "start a new run (--overwrite, or another --out)"
        )
    keep = {k: v for k, v in flags.items() if k in (*KEEP_ON_RESUME, "data")}
    return dataclasses.replace(saved, out=out, **keep)


def _normal(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def check_resume_method(info: dict[str, Any], asked: str | None, out: Any) -> None:
    """A run is resumed only by the method it was made with (``asked``: "scratch" for
    ``rwkvkit train``, else the fine-tuning method; None: plain train)."""
    method, asked = run_method(info), asked or "scratch"
    if method != asked:
        made = "`rwkvkit train`" if method == "scratch" else f"`rwkvkit finetune --method {method}`"
        tried = "`rwkvkit train`" if asked == "scratch" else f"--method {asked}"
        raise ConfigError(
            f"{out} was made by {made}; it cannot be resumed with {tried}. Resume it as it was made, "
            "or start a new run in another --out folder"
        )
