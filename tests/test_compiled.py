"""The speed settings a loaded model runs with: the compiled step (rwkvkit/compiled.py), the default
thread count (rwkvkit/inference.py) and the flags that choose them (--quantize, --threads,
--compile), including their bad values.

The compiled step against the eager one: float32 at 1e-5 relative to the logits' size (inductor
reorders and fuses the same float32 sums; no precision changes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rwkvkit import testing
from rwkvkit.compiled import compile_step
from rwkvkit.inference import SMALL_MODEL_BYTES, default_threads, optimize_for_inference, physical_cores
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.ops import native
from tests.cli_run import rwkvkit_cli, save_tiny_model

V7 = RWKV7Config(vocab_size=97, n_layer=2, n_embd=64, ffn_dim=128, head_size=16, decay_lora=8, iclr_lora=8,
                 value_lora=8, gate_lora=8)  # fmt: skip


def _v7_model() -> torch.nn.Module:
    return optimize_for_inference(testing.random_rwkv7(V7, seed=3)).eval()


def test_without_a_compiler_the_step_stays_eager(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    model = _v7_model()
    eager = model.step
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert compile_step(model) is False
    assert model.step == eager
    assert "no C++ compiler found" in capsys.readouterr().err


def test_a_failed_compilation_falls_back_to_the_eager_step(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    model = _v7_model()
    monkeypatch.setattr(native, "compiler", lambda: "/usr/bin/c++")

    def failing(fn):
        def run(*args, **kwargs):
            raise torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no"), None)

        return run

    monkeypatch.setattr(torch, "compile", failing)
    monkeypatch.setattr("rwkvkit.compiled.compiler", lambda: "/usr/bin/c++")
    assert compile_step(model) is True
    tokens = torch.tensor([5])
    with torch.no_grad():
        _, state = model(torch.tensor([[1, 2, 3]]))
        got, _ = model.step(tokens, state)
        want, _ = type(model).step(model, tokens, state)
    assert torch.equal(got, want)
    assert "compiling the step failed" in capsys.readouterr().err
    assert model.step.__func__ is type(model).step  # the fallback is permanent: no retry per token


@pytest.mark.slow
@pytest.mark.skipif(native.compiler() is None, reason="inductor needs a C++ compiler")
def test_compiled_step_matches_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = _v7_model()
    torch._dynamo.reset()
    with torch.no_grad():
        _, state = model(torch.tensor([[1, 2, 3]]))
        want = [model.step(torch.tensor([t]), state)[0] for t in (4, 5)]
        assert compile_step(model)
        got = [model.step(torch.tensor([t]), state)[0] for t in (4, 5)]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5 * w.abs().max().item(), rtol=0)


def test_default_threads_follow_the_model_size(monkeypatch: pytest.MonkeyPatch) -> None:
    small = testing.random_rwkv4(RWKV4Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=64), seed=0)
    assert default_threads(small) == 1
    big = torch.nn.Linear(SMALL_MODEL_BYTES // 4 // 1024 + 1, 1024, bias=False)  # just over the line
    monkeypatch.setattr("rwkvkit.inference.physical_cores", lambda: 6)
    assert default_threads(big) == 6
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny.pth")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--threads", "0"], "--threads: must be at least 1, got 0"),
        (["--threads", "two"], "--threads: expected a whole number, got 'two'"),
        (["--quantize", "int3"], "--quantize: invalid choice: 'int3'"),
    ],
)
def test_bad_speed_flags_are_one_line_errors(tiny: Path, flags: list[str], message: str) -> None:
    proc = rwkvkit_cli("generate", "--model", str(tiny), "--prompt", "a", *flags, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("rwkvkit generate: error:")


def test_generate_with_int4_and_threads(tiny: Path) -> None:
    proc = rwkvkit_cli("generate", "--model", str(tiny), "--prompt", "ab", "--max-tokens", "4", "--quantize",
                       "int4", "--threads", "1", "--temperature", "0")  # fmt: skip
    assert proc.returncode == 0 and proc.stdout


def test_bench_reference_must_name_a_row(tmp_path: Path) -> None:
    proc = rwkvkit_cli("bench", "--shape", "tiny", "--contenders", "fp32", "--rounds", "1", "--decode-tokens", "1",
                       "--prefill", "0", "--no-batch", "--threads", "1", "--reference", "llama.cpp q8_0",
                       "--workdir", str(tmp_path), check=False)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "names no row" in proc.stderr and "'rwkvkit fp32'" in proc.stderr
