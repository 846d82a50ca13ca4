"""A training run folder as a checkpoint: where its files are, which checkpoints are complete.

A run folder (``rwkvkit train --out OUT``) holds:

- ``rwkvkit-run.json``: what was trained (architecture, model config, training arguments);
- ``checkpoints/step-NNNNNNN.safetensors``: the weights, BlinkDL-named (readable by
  ``rwkvkit.load_model`` and ``rwkvkit convert`` like any checkpoint);
- ``checkpoints/step-NNNNNNN.train.pt``: what resuming needs besides the weights (optimizer,
  step, RNG states), tensors and plain values only, read with ``weights_only=True``;
- ``metrics.jsonl``, ``loss.png``, ``samples.txt``.

A checkpoint counts only once both its files exist (the trainer writes the training state first,
the weights last; see :mod:`rwkvkit.train.run`). This module only reads: the checkpoint loader
uses it to find a run's newest weights, and the trainer to find where to resume.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..fileio import read_json

RUN_FILE = "rwkvkit-run.json"
# The run file's "format". Version 1 named the BPTT segment "chunk_len" and the WKV chunk
# "wkv_chunk"; version 2 calls them "bptt_len" and "chunk_len" (TrainConfig.from_saved maps them).
RUN_FORMAT = "rwkvkit-run-2"
CKPT_DIR = "checkpoints"
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
