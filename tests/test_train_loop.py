"""Data preparation and the training loop: formats, a short run, exact resume, a kill during a
save, truncated BPTT, the GPT baseline, export to the official package, and 2-rank DDP."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import rwkvkit
from rwkvkit.errors import RwkvkitError
from rwkvkit.models.gpt import GPT, GPTState
from rwkvkit.models.rwkv4 import RWKV4
from rwkvkit.train import run as runfiles
from rwkvkit.train.data import DataError, TokenData, prepare, read_binidx, write_binidx
from rwkvkit.train.loop import TrainConfig, build, train

REPO = Path(__file__).resolve().parents[1]
TEXT = "".join(
    f"{name}: {line}\n"
    for name, line in [
        ("ROMEO", "But soft, what light through yonder window breaks?"),
        ("JULIET", "O Romeo, Romeo, wherefore art thou Romeo?"),
        ("HAMLET", "To be, or not to be, that is the question."),
        ("MACBETH", "Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace."),
    ]
    * 20
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("corpus")
    (src / "a.txt").write_text(TEXT)
    (src / "b.jsonl").write_text(
        "".join(json.dumps({"text": TEXT[i : i + 300]}) + "\n" for i in range(0, 3000, 300))
    )
    out = tmp_path_factory.mktemp("data")
    prepare([str(src)], out, tokenizer="byte", val_fraction=0.2, progress=False)
    return out


def tiny(data_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data_dir), out=str(out), n_layer=2, n_embd=32, n_head=2, ctx_len=32, batch_size=4,
        steps=6, warmup=2, lr=3e-3, lr_final=3e-4, save_every=3, eval_every=3, eval_windows=4,
        log_every=1, sample_len=8, threads=1, progress=False, wkv_chunk=8,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------- data


def test_prepare_text_jsonl_and_manifest(data_dir: Path) -> None:
    d = TokenData.open(data_dir)
    m = d.manifest
    assert m["tokenizer"] == "byte" and m["dtype"] == "uint16" and m["vocab_size"] == 256
    assert len(d.train) == m["train_tokens"] and len(d.val) == m["val_tokens"]
    assert abs(m["val_tokens"] / (m["train_tokens"] + m["val_tokens"]) - 0.2) < 0.01
    ids = np.concatenate([d.train, d.val])
    assert bytes(ids[: len(TEXT)].astype(np.uint8)) == TEXT.encode()  # text first, in order


def test_binidx_roundtrip_and_prepare(tmp_path: Path) -> None:
    docs = [[1, 2, 3, 300], [7] * 50, list(range(100))]
    flat = [t for d in docs for t in d]
    write_binidx(tmp_path / "ds", docs)
    assert read_binidx(tmp_path / "ds.bin").tolist() == flat
    m = prepare(
        [str(tmp_path / "ds.idx")], tmp_path / "out", tokenizer="world", val_fraction=0.1, progress=False
    )
    d = TokenData.open(tmp_path / "out")
    assert np.concatenate([d.train, d.val]).tolist() == flat
    assert m["train_tokens"] + m["val_tokens"] == 154


def test_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*text"):
        prepare([str(tmp_path / "bad.jsonl")], tmp_path / "o", progress=False)
    (tmp_path / "x.idx").write_bytes(b"NOTMAGIC" * 8)
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(DataError, match="binidx"):
        read_binidx(tmp_path / "x.idx")
    with pytest.raises(DataError, match="rwkvkit prepare"):
        TokenData.open(tmp_path)


# ---------------------------------------------------------------- training


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
    assert runfiles.complete_steps(out) == [3, 6]
    model = rwkvkit.load_model(out)
    assert isinstance(model, RWKV4)
    weights = load_file(runfiles.latest_checkpoint(out))
    assert all(
        torch.equal(model.state_dict()[k], v.reshape(model.state_dict()[k].shape)) for k, v in weights.items()
    )


def test_resume_is_bit_identical(data_dir: Path, tmp_path: Path) -> None:
    train(tiny(data_dir, tmp_path / "straight"))
    train(tiny(data_dir, tmp_path / "split", stop_after=3))
    assert runfiles.complete_steps(tmp_path / "split") == [3]
    train(tiny(data_dir, tmp_path / "split", resume=True))
    a = load_file(runfiles.latest_checkpoint(tmp_path / "straight"))
    b = load_file(runfiles.latest_checkpoint(tmp_path / "split"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


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
    assert runfiles.complete_steps(out) == [3]  # the lone step-6 training state does not count
    assert rwkvkit.load_model(out) is not None
    train(tiny(data_dir, out, resume=True))
    a = load_file(runfiles.latest_checkpoint(tmp_path / "straight"))
    b = load_file(runfiles.latest_checkpoint(out))
    assert all(torch.equal(a[k], b[k]) for k in a)


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
    s = train(tiny(data_dir, tmp_path / "tbptt", ctx_len=32, chunk_len=8, steps=2, eval_every=2))
    assert math.isfinite(s["loss"]) and math.isfinite(s["val_loss"])
    with pytest.raises(RwkvkitError, match="multiple"):
        train(tiny(data_dir, tmp_path / "bad", ctx_len=32, chunk_len=7))


# ---------------------------------------------------------------- GPT baseline


@pytest.mark.parametrize(("L", "C", "ctx"), [(4, 256, 256), (2, 32, 32), (12, 768, 1024), (6, 512, 4096)])
def test_gpt_parameter_count_within_5_percent(L: int, C: int, ctx: int) -> None:
    counts = {}
    for arch in ("rwkv4", "gpt"):
        cfg = TrainConfig(
            data="", out="", arch=arch, n_layer=L, n_embd=C, n_head=max(1, C // 64), ctx_len=ctx
        )
        with torch.device("meta"):
            model, _ = build(cfg, 256)
        counts[arch] = sum(p.numel() for p in model.parameters())
    assert abs(counts["gpt"] / counts["rwkv4"] - 1) < 0.05, counts


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


# ---------------------------------------------------------------- export, CLI, DDP


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_cli_train_and_export_to_official_rwkv(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rwkvkit", "train", "--data", str(data_dir), "--out", str(out), "--n-layer", "2",
           "--n-embd", "32", "--ctx-len", "32", "--batch-size", "2", "--steps", "2", "--eval-every", "0",
           "--save-every", "2", "--threads", "1", "--no-progress"]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    pth = tmp_path / "model.pth"
    r = subprocess.run(
        [sys.executable, "-m", "rwkvkit", "convert", str(out), str(pth), "--to", "pth"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    from rwkv.model import RWKV as OfficialRWKV

    official = OfficialRWKV(str(pth), "cpu fp32")
    tokens = [10, 82, 79, 77, 69, 79, 58, 32]
    ref, _ = official.forward(tokens, None, full_output=True)
    ours, _ = rwkvkit.load_model(out)(tokens)
    torch.testing.assert_close(ours[0], ref.float(), atol=1e-4, rtol=1e-4)


def test_resume_without_run_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RwkvkitError, match=r"rwkvkit-run\.json"):
        train(tiny(data_dir, tmp_path / "nothing", resume=True))


def test_ddp_two_cpu_ranks_equal_single_process_step(data_dir: Path, tmp_path: Path) -> None:
    """One step on 2 gloo ranks x 2 windows == one step in one process with 4 windows."""
    common = ["--data", str(data_dir), "--n-layer", "2", "--n-embd", "32", "--ctx-len", "32", "--steps", "1",
              "--warmup", "1", "--eval-every", "0", "--save-every", "1", "--threads", "1", "--no-progress",
              "--wkv-chunk", "8"]  # fmt: skip
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
        r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    a = load_file(runfiles.latest_checkpoint(tmp_path / "single"))
    b = load_file(runfiles.latest_checkpoint(tmp_path / "ddp"))
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


# ---------------------------------------------------------------- init, groups, schedule, L2Wrap


def test_official_init_formulas_and_param_groups() -> None:
    from rwkvkit.train.init import param_groups

    cfg = TrainConfig(data="", out="", n_layer=3, n_embd=16)
    torch.manual_seed(0)
    model, _ = build(cfg, 256)
    C = 16
    h = torch.arange(C, dtype=torch.float32)
    b0, b2 = model.blocks[0].att, model.blocks[2].att
    torch.testing.assert_close(b0.time_decay, -5 + 8 * (h / (C - 1)) ** 0.7)  # ratio_0_to_1 = 0
    torch.testing.assert_close(b2.time_decay, -5 + 8 * (h / (C - 1)) ** 2.0)  # ratio_0_to_1 = 1
    assert b0.time_first[0].item() == pytest.approx(math.log(0.3) + 0.0)  # zigzag: 0, 0.5, -0.5, ...
    assert b0.time_first[1].item() == pytest.approx(math.log(0.3) + 0.5)
    torch.testing.assert_close(b0.time_mix_k.flatten(), h / C)  # ratio_1_to_almost0 = 1 at layer 0
    torch.testing.assert_close(model.blocks[1].att.time_mix_v.flatten(), (h / C) ** (2 / 3) + 0.15)
    for name, p in model.named_parameters():
        if any(z in name for z in (".att.output.", ".ffn.value.", ".ffn.receptance.")):
            assert p.abs().max() == 0, name
    assert model.emb.weight.abs().max() <= 1e-4
    w = model.blocks[1].att.key.weight
    torch.testing.assert_close(w @ w.T, torch.eye(C), atol=1e-5, rtol=0)  # orthogonal
    groups = {g["name"]: g for g in param_groups(model, 0.1)}
    assert groups["time_decay"]["lr_scale"] == 2 and groups["time_first"]["lr_scale"] == 3
    assert all(p.squeeze().dim() >= 2 for p in groups["decay"]["params"])
    assert groups["no_decay"]["weight_decay"] == 0 and groups["decay"]["weight_decay"] == 0.1
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_schedule_and_l2wrap() -> None:
    from rwkvkit.train.loop import L2Wrap, learning_rate

    cfg = TrainConfig(data="", out="", lr=1e-3, lr_final=1e-4, warmup=10, steps=110)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4) and learning_rate(cfg, 9) == pytest.approx(1e-3)
    assert learning_rate(cfg, 10) == pytest.approx(1e-3) and learning_rate(cfg, 109) == pytest.approx(1e-4)
    assert learning_rate(cfg, 60) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=0.02)  # cosine midpoint
    cfg.decay = "exp"
    assert learning_rate(cfg, 60) == pytest.approx(math.sqrt(1e-3 * 1e-4), rel=0.05)
    logits = torch.tensor([[[1.0, 5.0, 2.0], [3.0, -1.0, 0.0]]], requires_grad=True)
    loss = (logits * 0).sum()
    L2Wrap.apply(loss, logits).backward()
    expect = torch.zeros(1, 2, 3)
    expect[0, 0, 1], expect[0, 1, 0] = 5e-4 / 2, 3e-4 / 2  # 1e-4 * max / (B * T), at the argmax only
    torch.testing.assert_close(logits.grad, expect)


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_matches_uninterrupted(data_dir: Path, tmp_path: Path) -> None:
    """A real SIGKILL at an arbitrary moment (saving every step, so often mid-save), then --resume:
    the final weights equal an uninterrupted run's, bit for bit."""
    import signal
    import time

    args = ["--data", str(data_dir), "--n-layer", "2", "--n-embd", "32", "--ctx-len", "32", "--batch-size", "2",
            "--steps", "12", "--warmup", "2", "--save-every", "1", "--eval-every", "0", "--threads", "1",
            "--no-progress", "--wkv-chunk", "8"]  # fmt: skip
    base = [sys.executable, "-m", "rwkvkit", "train"]
    r = subprocess.run([*base, "--out", str(tmp_path / "straight"), *args], cwd=REPO, env=_env(), timeout=300)
    assert r.returncode == 0
    out = tmp_path / "killed"
    p = subprocess.Popen([*base, "--out", str(out), *args], cwd=REPO, env=_env())
    deadline = time.time() + 240
    while len(runfiles.complete_steps(out)) < 3 and time.time() < deadline and p.poll() is None:
        time.sleep(0.01)
    time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    steps = runfiles.complete_steps(out)
    assert steps and steps[-1] < 12, steps
    for s in steps:  # every checkpoint that counts is readable
        rwkvkit.load_model(runfiles.weights_path(out, s))
    r = subprocess.run([*base, "--out", str(out), "--resume", *args], cwd=REPO, env=_env(), timeout=300)
    assert r.returncode == 0
    a = load_file(runfiles.latest_checkpoint(tmp_path / "straight"))
    b = load_file(runfiles.latest_checkpoint(out))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_prepare_world_tokenizer_and_errors(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(TEXT)
    r = subprocess.run(
        [sys.executable, "-m", "rwkvkit", "prepare", str(tmp_path / "t.txt"), "--out", str(tmp_path / "w"),
         "--tokenizer", "world", "--no-progress"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
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
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "missing.txt: no such file" in r.stderr


def test_rwkv7_trains_resumes_and_loads(data_dir: Path, tmp_path: Path) -> None:
    """--arch rwkv7: the official init, loss falls, the run folder loads as an RWKV-7, and its
    parallel and recurrent modes agree on the trained weights."""
    from rwkvkit.models.rwkv7 import RWKV7

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
