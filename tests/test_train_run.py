"""Run folders: a kill during a save resumes from the last complete checkpoint, and folders written
before the BPTT segment and the WKV chunk were renamed (rwkvkit-run-1) still resume exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_runs import TEXT, tiny

import rwkvkit
from rwkvkit.formats import run as layout
from rwkvkit.train import run as runfiles
from rwkvkit.train.config import TrainConfig
from rwkvkit.train.loop import train


def test_kill_during_save_resumes_from_last_good_checkpoint(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(tiny(data_dir, tmp_path / "straight"))
    out = tmp_path / "killed"
    real = runfiles.save_weights

    def dying(path: Path, *a, **kw):
        if "step-0000006" in path.name:
            path.parent.joinpath(".step-0000006.safetensors.partial.tmp").write_bytes(b"half a file")
            raise KeyboardInterrupt  # the process dies between the training state and the weights
        return real(path, *a, **kw)

    monkeypatch.setattr(runfiles, "save_weights", dying)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(data_dir, out))
    monkeypatch.setattr(runfiles, "save_weights", real)
    assert layout.complete_steps(out) == [3]  # the lone step-6 training state does not count
    # load_model(run folder) reads the last complete checkpoint: step 3's weights, not step 6's
    tokens = list(TEXT.encode()[:16])
    straight = tmp_path / "straight"
    with torch.no_grad():
        killed = rwkvkit.load_model(out)(tokens)[0]
        assert torch.equal(killed, rwkvkit.load_model(layout.weights_path(straight, 3))(tokens)[0])
        assert not torch.equal(killed, rwkvkit.load_model(layout.weights_path(straight, 6))(tokens)[0])
    train(tiny(data_dir, out, resume=True))
    a = load_file(layout.latest_checkpoint(tmp_path / "straight"))
    b = load_file(layout.latest_checkpoint(out))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run1_keys_are_mapped() -> None:
    """rwkvkit-run-1 named the BPTT segment chunk_len and the WKV chunk wkv_chunk."""
    saved = {"format": "rwkvkit-run-1", "train": {"data": "d", "out": "o", "chunk_len": 16, "wkv_chunk": 8}}
    cfg = TrainConfig.from_saved(saved)
    assert (cfg.bptt_len, cfg.chunk_len) == (16, 8)
    new = {"format": layout.RUN_FORMAT, "train": {"data": "d", "out": "o", "bptt_len": 16, "chunk_len": 8}}
    assert TrainConfig.from_saved(new) == cfg


def test_run_folder_written_before_the_rename_resumes_exactly(data_dir: Path, tmp_path: Path) -> None:
    train(tiny(data_dir, tmp_path / "straight", bptt_len=16))
    out = tmp_path / "old"
    train(tiny(data_dir, out, bptt_len=16, stop_after=3))
    info = json.loads((out / layout.RUN_FILE).read_text())
    assert info["format"] == layout.RUN_FORMAT == "rwkvkit-run-2"
    info["format"] = "rwkvkit-run-1"  # as the trainer wrote it before the rename
    t = info["train"]
    t["chunk_len"], t["wkv_chunk"] = t.pop("bptt_len"), t.pop("chunk_len")
    (out / layout.RUN_FILE).write_text(json.dumps(info))
    train(tiny(data_dir, out, resume=True))  # flags left at their defaults: the folder's values rule
    a = load_file(layout.latest_checkpoint(tmp_path / "straight"))
    b = load_file(layout.latest_checkpoint(out))
    assert all(torch.equal(a[k], b[k]) for k in a)


def cli(*args: str) -> int:
    from rwkvkit.cli import main

    return main(["train", *args])


TINY_FLAGS = ("--n-layer", "1", "--n-embd", "16", "--ctx-len", "32", "--bptt-len", "16", "--chunk-len", "8",
              "--batch-size", "2", "--steps", "4", "--warmup", "1", "--save-every", "2", "--eval-every", "2",
              "--eval-windows", "2", "--sample-len", "4", "--log-every", "1", "--threads", "1", "--no-progress")  # fmt: skip


def test_resume_repeats_no_flag_and_matches_the_uninterrupted_run(data_dir: Path, tmp_path: Path) -> None:
    """--ctx-len 32 and --bptt-len 16 are not the defaults: a resume that derived anything from the
    defaults before reading the run's config would compute another segment and other weights."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli("--data", str(data_dir), "--out", str(straight), *TINY_FLAGS) == 0
    assert cli("--data", str(data_dir), "--out", str(resumed), *TINY_FLAGS, "--stop-after", "2") == 0
    samples = (resumed / runfiles.SAMPLES).read_text()
    (resumed / runfiles.SAMPLES).write_text(samples + "=== step 4 (a sample of the lost future)\nx\n\n")
    assert cli("--out", str(resumed), "--resume") == 0
    a = load_file(layout.latest_checkpoint(straight))
    b = load_file(layout.latest_checkpoint(resumed))
    assert layout.latest_checkpoint(resumed).name == "step-0000004.safetensors"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / runfiles.METRICS).read_text().count("loss") == (
        resumed / runfiles.METRICS
    ).read_text().count("loss")
    assert (resumed / runfiles.SAMPLES).read_text().count("=== step 4") == 1


def test_overwrite_starts_clean(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli("--data", str(data_dir), "--out", str(out), *TINY_FLAGS, "--steps", "2") == 0
    (out / "notes.txt").write_text("mine")
    with pytest.raises(runfiles.RunFolderError, match="already holds a training run"):
        train(tiny(data_dir, out, steps=1))
    train(tiny(data_dir, out, n_embd=32, steps=1, save_every=1, eval_every=0, overwrite=True))
    assert layout.complete_steps(out) == [1]  # the old run's step-2 checkpoint of width 16 is gone
    assert rwkvkit.load_model(out).config.n_embd == 32 and (out / "notes.txt").read_text() == "mine"


def test_run_folder_tidy_and_torn_metrics(tmp_path: Path) -> None:
    ck = tmp_path / layout.CKPT_DIR
    ck.mkdir()
    for step in (2, 4):
        layout.weights_path(tmp_path, step).write_bytes(b"w")
        layout.train_state_path(tmp_path, step).write_bytes(b"s")
    layout.train_state_path(tmp_path, 6).write_bytes(b"orphan")  # killed before its weights
    (ck / ".step-0000006.safetensors.0badf00d.tmp").write_bytes(b"half")
    (tmp_path / ".metrics.jsonl.0badf00d.tmp").write_bytes(b"half")
    runfiles.tidy(tmp_path)
    assert sorted(p.name for p in ck.iterdir()) == [
        "step-0000002.safetensors", "step-0000002.train.pt", "step-0000004.safetensors", "step-0000004.train.pt",
    ]  # fmt: skip
    assert not list(tmp_path.glob(".*.tmp"))
    metrics = tmp_path / runfiles.METRICS
    metrics.write_text('{"step": 1, "loss": 2}\n{"step": 5, "loss": 1}\n{"step": 6, "lo')
    runfiles.truncate_metrics(metrics, 4)
    assert metrics.read_text() == '{"step": 1, "loss": 2}\n'
    metrics.write_text('{"step": 1}\n{"ste\n{"step": 2}\n')
    with pytest.raises(Exception, match="line 2 is damaged"):
        runfiles.truncate_metrics(metrics, 4)


def test_one_writer_per_run_folder(tmp_path: Path) -> None:
    import fcntl

    with open(tmp_path / runfiles.LOCK_FILE, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        with (
            pytest.raises(runfiles.RunFolderError, match=r"another training \(process 4242\)"),
            runfiles.run_lock(tmp_path),
        ):
            pass
    (tmp_path / runfiles.LOCK_FILE).write_text("999999\n")  # a lock file left by a killed run
    with runfiles.run_lock(tmp_path):
        assert (tmp_path / runfiles.LOCK_FILE).read_text().strip() == str(__import__("os").getpid())


def test_training_stops_at_the_first_non_finite_loss(data_dir: Path, tmp_path: Path) -> None:
    """--lr 1e30 makes the weights explode after one step; the run stops there, naming the step,
    and every checkpoint it wrote is finite."""
    from rwkvkit.errors import NonFiniteError

    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="not finite"):
        train(tiny(data_dir, out, lr=1e30, warmup=0, save_every=1, eval_every=0, steps=5))
    for step in layout.complete_steps(out):
        assert all(torch.isfinite(t).all() for t in load_file(layout.weights_path(out, step)).values())
