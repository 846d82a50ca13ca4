"""TrainConfig checks every field as the flag it is, and ``rwkvkit train``'s config on --resume is
the saved run's, with only the length and reporting flags taken from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rwkvkit.errors import CheckpointError, ConfigError
from rwkvkit.formats.run import RUN_FILE
from rwkvkit.train.config import TrainConfig, config_from_flags

BAD = {
    "steps": 0, "grad_accum": 0, "batch_size": 0, "ctx_len": 0, "n_embd": 0, "log_every": 0,
    "chunk_len": -1, "warmup": -1, "lr": -1.0, "lr_final": float("nan"), "ffn_mult": 0.0,
    "weight_decay": float("inf"), "grad_clip": -1.0, "seed": -1, "decay": "bogus", "precision": "fp4",
    "betas": (0.9, 1.0), "threads": -2, "n_layer": 1.5, "resume": "yes",
}  # fmt: skip


@pytest.mark.parametrize("field", list(BAD))
def test_every_field_is_checked(field: str) -> None:
    flag = "--" + field.replace("_", "-")
    with pytest.raises(ConfigError, match=flag):
        TrainConfig(data="d", out="o", **{field: BAD[field]})


def test_bptt_must_divide_the_window_and_resume_excludes_overwrite() -> None:
    with pytest.raises(ConfigError, match="--ctx-len 64 must be a multiple of --bptt-len 24"):
        TrainConfig(data="d", out="o", ctx_len=64, bptt_len=24)
    with pytest.raises(ConfigError, match="pass one of them"):
        TrainConfig(data="d", out="o", resume=True, overwrite=True)


def saved_run(tmp_path: Path, **train: object) -> Path:
    cfg = TrainConfig(data="data", out=str(tmp_path), ctx_len=64, bptt_len=32, n_embd=48, **train)  # type: ignore[arg-type]
    info = {"format": "rwkvkit-run-2", "train": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
    (tmp_path / RUN_FILE).write_text(json.dumps(info))
    return tmp_path


def test_resume_reads_the_saved_config_first(tmp_path: Path) -> None:
    out = saved_run(tmp_path)
    cfg = config_from_flags({"out": str(out), "resume": True, "steps": 50, "n_embd": 48})
    assert (cfg.ctx_len, cfg.bptt_len, cfg.n_embd, cfg.steps, cfg.data) == (64, 32, 48, 50, "data")
    cfg = config_from_flags({"out": str(out), "resume": True, "data": "moved"})
    assert cfg.data == "moved"  # a moved data folder; the trainer checks its tokenizer


def test_a_contradicting_flag_names_both_values(tmp_path: Path) -> None:
    out = saved_run(tmp_path)
    with pytest.raises(ConfigError, match=r"--ctx-len 256 contradicts the run's saved 64; --betas 0\.8 0\.9"):
        config_from_flags({"out": str(out), "resume": True, "ctx_len": 256, "betas": [0.8, 0.9]})


def test_a_damaged_saved_config_is_named(tmp_path: Path) -> None:
    out = saved_run(tmp_path)
    info = json.loads((out / RUN_FILE).read_text())
    info["train"]["lr"] = "fast"
    (out / RUN_FILE).write_text(json.dumps(info))
    with pytest.raises(
        CheckpointError, match=r"rwkvkit-run\.json: holds a training config that cannot be used: --lr"
    ):
        config_from_flags({"out": str(out), "resume": True})
    with pytest.raises(ConfigError, match="--data is required"):
        config_from_flags({"out": str(out)})
