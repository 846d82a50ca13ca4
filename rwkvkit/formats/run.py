"""A training run folder as a checkpoint: where its files are, which checkpoints are complete.

A run folder (``rwkvkit train --out OUT``) holds:

- ``rwkvkit-run.json``: what was trained (architecture, model config, training arguments);
- ``checkpoints/step-NNNNNNN.safetensors``: the weights, BlinkDL-named (readable by
  ``rwkvkit.load_model`` and ``rwkvkit convert`` like any checkpoint);
- ``checkpoints/step-NNNNNNN.train.pt``: what resuming needs besides the weights (optimizer,
  step, RNG states), tensors and plain values only, read with ``weights_only=True``;
- ``metrics.jsonl``, ``loss.png``, ``samples.txt``.

A fine-tuning run (``rwkvkit finetune``) records its ``method`` and its ``base`` model in the run
file. A full fine-tune's checkpoints are whole weights, as above. A LoRA or state-tuning run's
checkpoints hold only what it trains (the adapter, the state); beside them it keeps the newest as
``adapter/`` (PEFT's layout, :mod:`rwkvkit.lora`) or ``state.safetensors`` (an rwkvkit state file)
and ``state.pth`` (the official ``blocks.N.att.time_state`` layout, RWKV-5/6/7), and loading the
run means loading its base with them.

A checkpoint counts only once both its files exist (the trainer writes the training state first,
the weights last; see :mod:`rwkvkit.train.run`). This module only reads: the checkpoint loader
uses it to find a run's newest weights, and the trainer to find where to resume.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..defaults import default_model_path
from ..errors import CheckpointError
from ..fileio import read_json

RUN_FILE = "rwkvkit-run.json"
# The run file's "format". Version 1 named the BPTT segment "chunk_len" and the WKV chunk
# "wkv_chunk"; version 2 calls them "bptt_len" and "chunk_len" (TrainConfig.from_saved maps them).
RUN_FORMAT = "rwkvkit-run-2"
CKPT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
STATE_FILE = "state.safetensors"
OFFICIAL_STATE_FILE = "state.pth"
# run methods whose checkpoints are not whole models: the run is its base plus what they trained
TUNED_METHODS = ("lora", "state")
_WEIGHTS = re.compile(r"^step-(\d{7,})\.safetensors$")


def is_run_folder(path: Path) -> bool:
    return (Path(path) / RUN_FILE).is_file()


def weights_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step-{step:07d}.safetensors"


def train_state_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step-{step:07d}.train.pt"


def complete_steps(run_dir: str | Path) -> list[int]:
    """Steps with a complete checkpoint (weights and training state both present), ascending."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    steps = []
    for f in d.iterdir():
        m = _WEIGHTS.match(f.name)
        if m and train_state_path(run_dir, int(m.group(1))).is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest complete checkpoint's weights file (what ``load_model(run_dir)`` reads)."""
    steps = complete_steps(run_dir)
    if not steps:
        raise CheckpointError(run_dir, "this training run has no complete checkpoint yet (see --save-every)")
    return weights_path(run_dir, steps[-1])


def read_run_file(run_dir: str | Path) -> dict[str, Any]:
    """``rwkvkit-run.json`` as written (the trainer maps older key names: TrainConfig.from_saved)."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise CheckpointError(run_dir, f"not a training run: no {RUN_FILE}")
    return read_json(path, CheckpointError)


def run_method(info: dict[str, Any]) -> str:
    """How a run trained: "scratch" (``rwkvkit train``), or the fine-tuning method."""
    return str(info.get("method", "scratch"))


def tuned_base(run_dir: str | Path, info: dict[str, Any]) -> Path:
    """The base model a fine-tuning run started from (the bundled model, wherever it is installed)."""
    base = info.get("base") or {}
    path = default_model_path() if base.get("bundled") else Path(base.get("path", ""))
    if path is None or not path.exists():
        raise CheckpointError(
            run_dir,
            f"this run was tuned from {base.get('path')}, which is not there any more; load the base "
            "and the tuned part separately: rwkvkit.load_model(BASE, adapter=RUN) or (..., state=RUN)",
        )
    return path
