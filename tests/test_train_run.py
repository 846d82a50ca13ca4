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
