"""The training loop: a short run, exact resume, truncated BPTT, the GPT baseline, RWKV-7,
bf16 autocast, 2-rank DDP, a SIGKILL anywhere (slow), and L2Wrap."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_runs import REPO, tiny, train_env

import rwkvkit
from rwkvkit.errors import RwkvkitError
from rwkvkit.formats import run as layout
from rwkvkit.models.gpt import GPT, GPTState
from rwkvkit.models.rwkv4 import RWKV4
from rwkvkit.models.rwkv7 import RWKV7
from rwkvkit.train.arch import build
from rwkvkit.train.loop import L2Wrap, train


def test_short_run_writes_everything_and_loads(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = train(tiny(data_dir, out))
    assert summary["step"] == 6
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "tokens_per_s"} <= r.keys() for r in train_rows)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]  # it learns
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "=== step 6" in (out / "samples.txt").read_text()
    assert layout.complete_steps(out) == [3, 6]
    model = rwkvkit.load_model(out)
    assert isinstance(model, RWKV4)
    weights = load_file(layout.latest_checkpoint(out))
    assert all(
        torch.equal(model.state_dict()[k], v.reshape(model.state_dict()[k].shape)) for k, v in weights.items()
    )


def test_resume_is_bit_identical(data_dir: Path, tmp_path: Path) -> None:
    train(tiny(data_dir, tmp_path / "straight"))
    train(tiny(data_dir, tmp_path / "split", stop_after=3))
    assert layout.complete_steps(tmp_path / "split") == [3]
    train(tiny(data_dir, tmp_path / "split", resume=True))
    a = load_file(layout.latest_checkpoint(tmp_path / "straight"))
    b = load_file(layout.latest_checkpoint(tmp_path / "split"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_truncated_bptt_carries_state(data_dir: Path, tmp_path: Path) -> None:
    """Segments with the state carried compute the same loss as the whole window at once."""
    cfg = tiny(data_dir, tmp_path / "x")
    torch.manual_seed(0)
    model, _ = build(cfg, 256)
    x = torch.randint(0, 256, (2, 64))
    whole, _ = model(x)
    a, st = model(x[:, :16])
    b, _ = model(x[:, 16:], st.detach())
    torch.testing.assert_close(torch.cat([a, b], 1), whole, atol=1e-5, rtol=1e-5)
    s = train(tiny(data_dir, tmp_path / "tbptt", ctx_len=32, bptt_len=8, steps=2, eval_every=2))
    assert math.isfinite(s["loss"]) and math.isfinite(s["val_loss"])
    with pytest.raises(RwkvkitError, match="multiple"):
        train(tiny(data_dir, tmp_path / "bad", ctx_len=32, bptt_len=7))


def test_gpt_trains_loads_and_follows_the_call_convention(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpt"
    train(tiny(data_dir, out, arch="gpt", steps=3))
    model = rwkvkit.load_model(out)
    assert isinstance(model, GPT) and model.config.n_head == 2
    x = torch.randint(0, 256, (2, 12))
    whole, state = model(x)
    assert isinstance(state, GPTState) and state.key.shape[3] == 12
    a, st = model(x[:, :5])
    saved = st.clone()
    b, _ = model(x[:, 5:], st)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, atol=1e-5, rtol=1e-5)
    assert torch.equal(st.key, saved.key)  # the call did not change the state it was given
    one, _ = model(x[:, 5:6], saved)
    torch.testing.assert_close(one[:, 0], b[:, 0], atol=1e-5, rtol=1e-5)


def test_rwkv7_trains_resumes_and_loads(data_dir: Path, tmp_path: Path) -> None:
    """--arch rwkv7: the official init, loss falls, the run folder loads as an RWKV-7, and its
    parallel and recurrent modes agree on the trained weights."""
    out = tmp_path / "v7"
    summary = train(tiny(data_dir, out, arch="rwkv7", n_embd=64, head_size=32, steps=6, lr=3e-3))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < losses[0], losses
    model = rwkvkit.load_model(out)
    assert isinstance(model, RWKV7) and model.config.head_size == 32
    assert summary["step"] == 6
    x = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        whole, _ = model(x)
        steps, state = [], None
        for t in range(20):
            out_t, state = model(x[:, t : t + 1], state)
            steps.append(out_t)
    torch.testing.assert_close(torch.cat(steps, 1), whole, atol=2e-5, rtol=2e-5)


def test_resume_without_run_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RwkvkitError, match=r"rwkvkit-run\.json"):
        train(tiny(data_dir, tmp_path / "nothing", resume=True))


def test_ddp_two_cpu_ranks_equal_single_process_step(data_dir: Path, tmp_path: Path) -> None:
    """One step on 2 gloo ranks x 2 windows == one step in one process with 4 windows."""
    common = ["--data", str(data_dir), "--n-layer", "2", "--n-embd", "32", "--ctx-len", "32", "--steps", "1",
              "--warmup", "1", "--eval-every", "0", "--save-every", "1", "--threads", "1", "--no-progress",
              "--chunk-len", "8"]  # fmt: skip
    single = [
        sys.executable,
        "-m",
        "rwkvkit",
        "train",
        "--out",
        str(tmp_path / "single"),
        "--batch-size",
        "4",
    ]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "rwkvkit", "train", "--out", str(tmp_path / "ddp"), "--batch-size", "2"]  # fmt: skip
    for cmd in (single + common, ddp + common):
        r = subprocess.run(cmd, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    a = load_file(layout.latest_checkpoint(tmp_path / "single"))
    b = load_file(layout.latest_checkpoint(tmp_path / "ddp"))
    init = dataclasses.replace(tiny(data_dir, tmp_path / "x"), n_layer=2, n_embd=32)
    torch.manual_seed(0)
    start = build(init, 256)[0].state_dict()
    moved = sum(not torch.equal(a[k], start[k].reshape(a[k].shape)) for k in a)
    assert moved >= 8, moved  # the step changed the weights (the comparison is not vacuous)
    # gloo's all-reduce sums the two ranks' gradients in another order than one process does
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_bf16_autocast_run(data_dir: Path, tmp_path: Path) -> None:
    """--precision bf16 trains (autocast on the CPU too); the WKV itself stays in float32."""
    s = train(tiny(data_dir, tmp_path / "bf16", precision="bf16", steps=2, eval_every=2))
    assert math.isfinite(s["loss"]) and math.isfinite(s["val_loss"])


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_matches_uninterrupted(data_dir: Path, tmp_path: Path) -> None:
    """A real SIGKILL at an arbitrary moment (saving every step, so often mid-save), then --resume:
    the final weights equal an uninterrupted run's, bit for bit."""
    args = ["--data", str(data_dir), "--n-layer", "2", "--n-embd", "32", "--ctx-len", "32", "--batch-size", "2",
            "--steps", "12", "--warmup", "2", "--save-every", "1", "--eval-every", "0", "--threads", "1",
            "--no-progress", "--chunk-len", "8"]  # fmt: skip
    base = [sys.executable, "-m", "rwkvkit", "train"]
    r = subprocess.run(
        [*base, "--out", str(tmp_path / "straight"), *args], cwd=REPO, env=train_env(), timeout=300
    )
    assert r.returncode == 0
    out = tmp_path / "killed"
    p = subprocess.Popen([*base, "--out", str(out), *args], cwd=REPO, env=train_env())
    deadline = time.time() + 240
    while len(layout.complete_steps(out)) < 3 and time.time() < deadline and p.poll() is None:
        time.sleep(0.01)
    time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    steps = layout.complete_steps(out)
    assert steps and steps[-1] < 12, steps
    for s in steps:  # every checkpoint that counts is readable
        rwkvkit.load_model(layout.weights_path(out, s))
    r = subprocess.run([*base, "--out", str(out), "--resume", *args], cwd=REPO, env=train_env(), timeout=300)
    assert r.returncode == 0
    a = load_file(layout.latest_checkpoint(tmp_path / "straight"))
    b = load_file(layout.latest_checkpoint(out))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_l2wrap() -> None:
    logits = torch.tensor([[[1.0, 5.0, 2.0], [3.0, -1.0, 0.0]]], requires_grad=True)
    loss = (logits * 0).sum()
    L2Wrap.apply(loss, logits).backward()
    expect = torch.zeros(1, 2, 3)
    expect[0, 0, 1], expect[0, 1, 0] = 5e-4 / 2, 3e-4 / 2  # 1e-4 * max / (B * T), at the argmax only
    torch.testing.assert_close(logits.grad, expect)
