"""Writing a run folder (its layout, and reading it back, are :mod:`rwkvkit.formats.run`).

Each checkpoint file is written atomically (temp file, fsync, rename), the training state before
the weights, and a checkpoint counts only once both exist: a run killed during a save leaves at
most a temp file or a lone state file behind, and resumes from the previous complete checkpoint.
Beside the checkpoints the run keeps ``metrics.jsonl`` (a JSON row per log line), ``loss.png``
(drawn from it) and ``samples.txt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from ..fileio import atomic_path, atomic_write_bytes
from ..formats.run import RUN_FILE, complete_steps, train_state_path, weights_path

METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
SAMPLES = "samples.txt"


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


# ---------------------------------------------------------------- metrics, plot, samples


def append_metrics(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, forget rows logged after the checkpoint we go back to."""
    if not path.is_file():
        return
    rows = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step
    ]
    atomic_write_bytes(path, ("\n".join(rows) + "\n" if rows else "").encode())


def plot_losses(metrics: Path, png: Path, title: str) -> None:
    """Training and validation loss against step, from metrics.jsonl."""
    try:  # matplotlib is imported here, not at the top: it is slow to import and only the plot needs it
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # plotting is a convenience; the numbers are in metrics.jsonl
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if tr:
        ax.plot(*zip(*tr, strict=True), label="train", lw=1)
    if va:
        ax.plot(*zip(*va, strict=True), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
