"""``rwkvkit convert``: a subprocess run that writes bf16 safetensors, and a bad file as one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from test_convert import CASES, TOKENS, logits

import rwkvkit
from rwkvkit.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_cli_converts_v7(tmp_path: Path) -> None:
    config, make = CASES["7"]
    torch.save(make(config, seed=4), tmp_path / "src.pth")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rwkvkit", "convert", str(tmp_path / "src.pth"), str(tmp_path / "o.safetensors"),
         "--to", "safetensors", "--dtype", "bf16"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    model = rwkvkit.load_model(tmp_path / "o.safetensors", dtype=torch.bfloat16)
    assert model.config.version == "7"
    with torch.no_grad():
        got = model(TOKENS)[0]
    # bf16 weights: 8 bits of mantissa, logits ~5 -> differences of a few 1e-2 are rounding.
    torch.testing.assert_close(got, logits(tmp_path / "src.pth"), atol=0.25, rtol=0.05)


def test_cli_convert_reports_errors_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"junk" * 10)
    assert main(["convert", str(tmp_path / "junk.pth"), str(tmp_path / "out.pth"), "--to", "pth"]) == 2
