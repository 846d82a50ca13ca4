"""Writing a run folder (its layout, and reading it back, are :mod:`rwkvkit.formats.run`).

Each checkpoint file is written atomically (temp file, fsync, rename), the training state before
the weights, and a checkpoint counts only once both exist: a run killed during a save leaves at
most a temp file or a lone state file behind, which the next run in the folder removes, and
resumes from the previous complete checkpoint. Beside the checkpoints the run keeps
``metrics.jsonl`` (a JSON row per log line), ``loss.png`` (drawn from it) and ``samples.txt``.

One run folder has one writer: the trainer holds an exclusive lock on ``rwkvkit-run.lock`` (which
records its PID) while it runs. The lock is the kernel's (``flock``), so it ends with the process
however it ends: a lock file left by a killed run is simply taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, FileAccessError, RwkvkitError
from ..fileio import atomic_path, atomic_write_bytes, os_problem, remove_temp_files, write_json
from ..formats.run import (
    ADAPTER_DIR,
    CKPT_DIR,
    OFFICIAL_STATE_FILE,
    RUN_FILE,
    STATE_FILE,
    complete_steps,
    train_state_path,
    weights_path,
)

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer per folder is then up to the user
    fcntl = None  # type: ignore[assignment]

METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
SAMPLES = "samples.txt"
LOCK_FILE = "rwkvkit-run.lock"
# Everything a run writes in its folder (what --overwrite removes; nothing else is touched).
RUN_OUTPUTS = (RUN_FILE, CKPT_DIR, METRICS, LOSS_PLOT, SAMPLES, ADAPTER_DIR, STATE_FILE, OFFICIAL_STATE_FILE)


class RunFolderError(RwkvkitError):
    """A run folder cannot be used as asked: in use, holding another run, not a folder."""


def holds_run(run_dir: Path) -> bool:
    """Whether a folder holds (part of) a training run: its run file, checkpoints or metrics."""
    return any((run_dir / name).exists() for name in (RUN_FILE, CKPT_DIR, METRICS))


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock for the duration; refuse if another live process holds it."""
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise FileAccessError(path, f"cannot create the run's lock file: {os_problem(e)}") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                raise RunFolderError(
                    f"{run_dir}: another training (process {holder}) is writing to this run folder; "
                    "wait for it to finish, or train into another --out"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def clear_run(run_dir: Path) -> None:
    """Delete what a previous run wrote in ``run_dir`` (--overwrite); other files stay."""
    for name in RUN_OUTPUTS:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def tidy(run_dir: Path) -> None:
    """Remove what killed saves left: temp files, and training states whose weights never came."""
    remove_temp_files(run_dir)
    ckpt = run_dir / CKPT_DIR
    if ckpt.is_dir():
        remove_temp_files(ckpt)
        complete = set(complete_steps(run_dir))
        for f in ckpt.glob("step-*.train.pt"):
            m = re.fullmatch(r"step-(\d+)\.train\.pt", f.name)
            if m and int(m.group(1)) not in complete:
                f.unlink(missing_ok=True)


def write_run_file(run_dir: str | Path, info: dict[str, Any]) -> None:
    write_json(Path(run_dir) / RUN_FILE, info)


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
    (run_dir / CKPT_DIR).mkdir(exist_ok=True)
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
    """On resume, forget rows logged after the checkpoint we go back to. A last line cut short
    (the run was killed while writing it) is dropped; a damaged line elsewhere is an error."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_bytes().decode("utf-8", "replace").splitlines() if ln.strip()]
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):
            if n == len(lines):
                break  # torn by a kill mid-write
            raise CheckpointError(
                path, f"line {n} is damaged (not a JSON object); delete that line"
            ) from None
        step_of_row = row.get("step", 0)
        if isinstance(step_of_row, (int, float)) and step_of_row <= step:
            rows.append(line)
    atomic_write_bytes(path, ("\n".join(rows) + "\n" if rows else "").encode())


_SAMPLE_HEAD = re.compile(r"^=== step (\d+)\b", re.MULTILINE)


def truncate_samples(path: Path, step: int) -> None:
    """On resume, forget the samples written after the checkpoint we go back to."""
    if not path.is_file():
        return
    text = path.read_bytes().decode("utf-8", "replace")
    cut = next((m.start() for m in _SAMPLE_HEAD.finditer(text) if int(m.group(1)) > step), None)
    if cut is not None:
        atomic_write_bytes(path, text[:cut].encode("utf-8"))


def plot_losses(metrics: Path, png: Path, title: str) -> None:
    """Training and validation loss against step, from metrics.jsonl."""
    try:  # matplotlib is imported here, not at the top: it is slow to import and only the plot needs it
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # plotting is a convenience; the numbers are in metrics.jsonl
    rows = [json.loads(ln) for ln in metrics.read_text(encoding="utf-8").splitlines() if ln.strip()]
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
