"""Running the ``rwkvkit`` command as a user does, in a subprocess, for the CLI tests; and the tiny
random byte-level model they give it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.testing import random_rwkv4_state_dict

REPO = Path(__file__).resolve().parents[1]
CONFIG = RWKV4Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=64)


def rwkvkit_cli(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [sys.executable, "-m", "rwkvkit", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=REPO,
        env=env,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def save_tiny_model(path: Path, seed: int = 23) -> Path:
    torch.save(random_rwkv4_state_dict(CONFIG, seed=seed), path)
    return path


def printed(text: str) -> str:
    """What ``rwkvkit generate`` prints for a generated ``text``: it ends with a newline."""
    return text + "\n" if text and not text.endswith("\n") else text
