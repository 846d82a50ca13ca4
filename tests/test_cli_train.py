"""``rwkvkit train`` in a subprocess: train, export to the official package, the renamed flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from train_runs import REPO, train_env

import rwkvkit
from rwkvkit.formats.run import RUN_FILE


def test_cli_train_and_export_to_official_rwkv(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rwkvkit", "train", "--data", str(data_dir), "--out", str(out), "--n-layer", "2",
           "--n-embd", "32", "--ctx-len", "32", "--batch-size", "2", "--steps", "2", "--eval-every", "0",
           "--save-every", "2", "--threads", "1", "--no-progress"]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    pth = tmp_path / "model.pth"
    r = subprocess.run(
        [sys.executable, "-m", "rwkvkit", "convert", str(out), str(pth), "--to", "pth"],
        cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    from rwkv.model import RWKV as OfficialRWKV  # the optional peer: only this test needs it

    official = OfficialRWKV(str(pth), "cpu fp32")
    tokens = [10, 82, 79, 77, 69, 79, 58, 32]
    ref, _ = official.forward(tokens, None, full_output=True)
    ours, _ = rwkvkit.load_model(out)(tokens)
    torch.testing.assert_close(ours[0], ref.float(), atol=1e-4, rtol=1e-4)


def test_bptt_len_chunk_len_and_the_deprecated_wkv_chunk(data_dir: Path, tmp_path: Path) -> None:
    """--bptt-len is the truncated-BPTT segment, --chunk-len the WKV chunk; --wkv-chunk still sets
    the WKV chunk, with a warning."""
    common = ["--data", str(data_dir), "--n-layer", "1", "--n-embd", "16", "--ctx-len", "16", "--batch-size", "1",
              "--steps", "1", "--eval-every", "0", "--threads", "1", "--no-progress"]  # fmt: skip
    base = [sys.executable, "-m", "rwkvkit", "train"]
    for out, flags in (
        ("new", ["--bptt-len", "8", "--chunk-len", "4"]),
        ("old", ["--bptt-len", "8", "--wkv-chunk", "4"]),
    ):
        r = subprocess.run([*base, "--out", str(tmp_path / out), *common, *flags], cwd=REPO, env=train_env(),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr
        saved = json.loads((tmp_path / out / RUN_FILE).read_text())["train"]
        assert (saved["bptt_len"], saved["chunk_len"]) == (8, 4)
        assert ("--wkv-chunk is deprecated; use --chunk-len" in r.stderr) == (out == "old")
    r = subprocess.run([*base, "--out", str(tmp_path / "bad"), *common, "--bptt-len", "5"], cwd=REPO,
                       env=train_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert (
        r.returncode == 2
        and r.stderr.strip() == "rwkvkit train: error: --ctx-len 16 must be a multiple of --bptt-len 5"
    )
