"""Run folders and checkpoints.

A run folder (``rwkvkit train --out OUT``) holds:

- ``rwkvkit-run.json``: what was trained (architecture, model config, training arguments);
- ``checkpoints/step-NNNNNNN.safetensors``: the weights, BlinkDL-named (readable by
  ``rwkvkit.load_model`` and ``rwkvkit convert`` like any checkpoint);
- ``checkpoints/step-NNNNNNN.train.pt``: what resuming needs besides the weights (optimizer,
  step, RNG states), tensors and plain values only, read with ``weights_only=True``;
- ``metrics.jsonl``, ``loss.png``, ``samples.txt``.

Each file is written atomically (temp file, fsync, rename), the training state before the
weights, and a checkpoint counts only once both exist: a run killed during a save leaves at most
a temp file or a lone state file behind, and resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from ..fileio import atomic_path, atomic_write_bytes

RUN_FILE = "rwkvkit-run.json"
CKPT_DIR = "checkpoints"
_WEIGHTS = re.compile(r"^step-(\d{7,})\.safetensors$")


def weights_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step-{step:07d}.safetensors"


def train_state_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step-{step:07d}.train.pt"


def complete_steps(run_dir: str | Path) -> list[int]:
    """Steps with a complete checkpoint (weights and training state both present), ascending."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    steps = []
    for f in d.iterdir():
        m = _WEIGHTS.match(f.name)
        if m and train_state_path(Path(run_dir), int(m.group(1))).is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest complete checkpoint's weights file (what ``load_model(run_dir)`` reads)."""
    steps = complete_steps(run_dir)
    if not steps:
        raise CheckpointError(run_dir, "this training run has no complete checkpoint yet (see --save-every)")
    return weights_path(Path(run_dir), steps[-1])


def read_run_file(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(run_dir, f"not a training run: no {RUN_FILE}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"not valid JSON ({e})") from None


def write_run_file(run_dir: str | Path, info: dict[str, Any]) -> None:
    atomic_write_bytes(Path(run_dir) / RUN_FILE, (json.dumps(info, indent=2) + "\n").encode())


def save_weights(path: Path, state_dict: dict[str, Tensor], config: dict[str, Any], **meta: Any) -> None:
    """BlinkDL-named safetensors, with the config the keys cannot tell in the metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    metadata = {"rwkvkit_config": json.dumps(config), **{k: str(v) for k, v in meta.items()}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_checkpoint(
    run_dir: Path,
    step: int,
    state_dict: dict[str, Tensor],
    config: dict[str, Any],
    train_state: dict,
    keep: int,
) -> Path:
    """Write one checkpoint (training state first, weights last) and drop all but the newest ``keep``."""
    with atomic_path(train_state_path(run_dir, step)) as tmp:
        torch.save(train_state, tmp)
    path = weights_path(run_dir, step)
    save_weights(path, state_dict, config, step=step)
    if keep > 0:
        for old in complete_steps(run_dir)[:-keep]:
            weights_path(run_dir, old).unlink(missing_ok=True)
            train_state_path(run_dir, old).unlink(missing_ok=True)
    return path


def load_train_state(run_dir: Path, step: int) -> dict:
    path = train_state_path(run_dir, step)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(path, f"cannot read the training state ({e}); delete this checkpoint") from None
