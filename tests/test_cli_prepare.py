"""``rwkvkit prepare`` in a subprocess: the World tokenizer, and a missing input named in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from train_runs import REPO, TEXT, train_env

import rwkvkit
from rwkvkit.train.data import TokenData


def test_cli_prepare_world_tokenizer_and_errors(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(TEXT)
    r = subprocess.run(
        [sys.executable, "-m", "rwkvkit", "prepare", str(tmp_path / "t.txt"), "--out", str(tmp_path / "w"),
         "--tokenizer", "world", "--no-progress"],
        cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = TokenData.open(tmp_path / "w")
    assert (
        d.manifest["tokenizer"] == "world"
        and d.manifest["vocab_size"] == 65536
        and d.train.dtype == np.uint16
    )
    assert d.manifest["bytes_per_token"] > 2  # World tokens are words, not bytes
    tok = rwkvkit.load_tokenizer("world")
    assert tok.decode(np.concatenate([d.train, d.val]).tolist()).startswith(TEXT[:200])
    r = subprocess.run(
        [sys.executable, "-m", "rwkvkit", "prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x")],
        cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "missing.txt: no such file" in r.stderr
