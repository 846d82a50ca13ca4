"""What a run trains, as the loop sees it: the model, the parameters the optimizer updates, what a
checkpoint holds and what a save leaves beside it.

``rwkvkit train`` trains a freshly built model whole (:func:`scratch`); ``rwkvkit finetune``
trains a loaded model whole, through a LoRA adapter, or through a learned initial state
(train/finetune.py). The loop is the same for all of them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..checkpoint import read_checkpoint
from .arch import build
from .config import TrainConfig
from .data import TokenData
from .init import param_groups


@dataclasses.dataclass
class Trainee:
    """A whole model trained as it is (a fresh one, or a full fine-tune).

    ``model`` is what validation and samples run; ``module`` is what the loop calls and
    DistributedDataParallel wraps: the model itself, or a module that holds the model and the
    parameters trained beside it. Subclasses change what is trained and saved.
    """

    model: nn.Module
    model_config: dict[str, Any]  # the model's config (checkpoint metadata, run file)
    arch: str  # rwkv4 ... rwkv7, gpt
    run_info: dict[str, Any] = dataclasses.field(default_factory=dict)  # more for rwkvkit-run.json

    @property
    def module(self) -> nn.Module:
        return self.model

    @property
    def title(self) -> str:
        return f"{self.arch} L{self.model_config['n_layer']} D{self.model_config['n_embd']}"

    def param_groups(self, weight_decay: float) -> list[dict]:
        return param_groups(self.module, weight_decay)

    def tensors(self) -> dict[str, Tensor]:
        """What a checkpoint holds."""
        return self.model.state_dict()

    def load(self, path: Path) -> None:
        """Put a checkpoint's tensors back (resuming)."""
        sd = read_checkpoint(path).state_dict
        own = self.model.state_dict()
        self.model.load_state_dict({k: v.reshape(own[k].shape) for k, v in sd.items()})

    def after_step(self) -> None:
        """After each optimizer step (e.g. keep a parameter in its allowed range)."""

    def export(self, out: Path) -> None:
        """After each checkpoint: the files a user takes away, besides the checkpoint."""


def scratch(cfg: TrainConfig, data: TokenData) -> Trainee:
    """A model built and initialised from the config's architecture (``rwkvkit train``)."""
    model, model_config = build(cfg, int(data.manifest["vocab_size"]))
    return Trainee(model, model_config, cfg.arch)
