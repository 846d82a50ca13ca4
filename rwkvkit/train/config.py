"""What a training run is asked to do: one dataclass, whose fields are ``rwkvkit train``'s flags,
and its fine-tuning sibling, whose fields are ``rwkvkit finetune``'s."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..lora import DEFAULT_TARGETS, LoraSettings

# rwkvkit-run-1 files named two fields otherwise: its "chunk_len" was the BPTT segment and its
# "wkv_chunk" the WKV chunk. Mapped together, so one old name never lands on the other's field.
_RUN1_NAMES = {"chunk_len": "bptt_len", "wkv_chunk": "chunk_len"}

# What a resumed run takes from the command line rather than from the run folder: how long it
# runs and how it reports, never the model or the data stream.
KEEP_ON_RESUME = (
    "steps",
    "stop_after",
    "resume",
    "progress",
    "threads",
    "device",
    "save_every",
    "eval_every",
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
    device: str = "auto"
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # JSON and argparse give lists

    @property
    def segment(self) -> int:
        """Tokens per truncated-BPTT segment (the whole window when bptt_len is 0)."""
        return self.bptt_len or self.ctx_len

    def saved(self) -> dict[str, Any]:
        """What the run file records (``rwkvkit-run.json``'s "train")."""
        return dataclasses.asdict(self)

    @classmethod
    def from_saved(cls, run_info: dict[str, Any]) -> TrainConfig:
        """The config a run folder's ``rwkvkit-run.json`` recorded, older key names mapped."""
        saved = dict(run_info["train"])
        if run_info.get("format") == "rwkvkit-run-1":
            saved = {_RUN1_NAMES.get(k, k): v for k, v in saved.items()}
        return cls(**saved)


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
