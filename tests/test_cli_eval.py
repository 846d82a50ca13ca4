"""``rwkvkit eval``: models side by side in a subprocess, the JSON it writes, and errors in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from eval_models import TEXT, write_jsonl

from rwkvkit.eval import evaluate
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.testing import random_rwkv4, random_rwkv4_state_dict

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "rwkvkit", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_compares_models_side_by_side(tmp_path: Path) -> None:
    cfg = RWKV4Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=48, chunk_len=8)
    paths = []
    for seed in (1, 2):
        paths.append(tmp_path / f"m{seed}.pth")
        torch.save(random_rwkv4_state_dict(cfg, seed=seed), paths[-1])
    play = tmp_path / "play.txt"
    play.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "res.json"
    r = run_cli(
        "eval", "--model", str(paths[0]), "--model", str(paths[1]), "--task", "perplexity",
        "--data", str(play), "--tokenizer", "byte", "--ctx-len", "16", "--json", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    results = json.loads(out.read_text())
    assert [x["model"] for x in results] == ["m1.pth", "m2.pth"]
    assert "m1.pth" in r.stdout and "m2.pth" in r.stdout and "bits per byte" in r.stdout
    model = random_rwkv4(cfg, seed=2)
    from rwkvkit import load_tokenizer

    expected = evaluate(model, load_tokenizer("byte"), "perplexity", play, ctx_len=16)
    assert results[1]["metrics"]["bits_per_byte"] == pytest.approx(
        expected.metrics["bits_per_byte"], rel=1e-6
    )
    assert results[1]["mode"] == "window 16"


def test_cli_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rwkvkit.cli import main

    path = tmp_path / "m.pth"
    torch.save(
        random_rwkv4_state_dict(RWKV4Config(vocab_size=256, n_layer=1, n_embd=16, ffn_dim=32), seed=1), path
    )
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}] * 3)
    assert (
        main(["eval", "--model", str(path), "--task", "multiple-choice", "--data", str(mc), "--limit", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "accuracy" in out and "examples" in out and " 2" in out
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"txt": "no text field"}])
    assert main(["eval", "--model", str(path), "--task", "lambada", "--data", str(bad)]) == 2
    assert "missing the field 'text'" in capsys.readouterr().err
