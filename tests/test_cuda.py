"""Every version on a GPU: loading every format in fp32, bf16 and fp16, the parallel and recurrent
modes (through the CUDA kernels the ops load there), gradients, training with bf16 autocast,
generation. Compared with the CPU in float32, which the rest of the suite ties to the official
package, transformers and rwkv.cpp. Skipped, saying why, where there is no GPU (``-m cuda``).

Tolerances are relative, ||gpu - cpu|| / ||cpu|| over the whole tensor: float32 on the GPU differs
from the CPU by the kernels' TF32 products (fla-core's, ~1e-3 each) and reassociated sums; bf16
and fp16 weights by their own rounding (2^-9 and 2^-12 relative per weight, over a dozen layers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import rwkvcpp_fixtures
from test_engine import REAL
from train_runs import tiny

import rwkvkit
from rwkvkit.convert import convert
from rwkvkit.ops import wkv4, wkv5, wkv7
from rwkvkit.testing import assert_step_matches_forward, parameter_gradients

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: these tests need one"),
]

CUDA = torch.device("cuda")
PROMPT = [34, 105, 110]  # the rwkv.cpp fixtures' prompt ('"', 'i', 'n')
FILES = [
    "tiny-rwkv-4v0-660K-FP32.bin",
    "tiny-rwkv-5v1-730K-FP32.bin",
    "tiny-rwkv-5v2-730K-FP32.bin",
    "tiny-rwkv-6v0-3m-Q5_1.bin",
    "tiny-rwkv-7v0-834K-FP32.bin",
]
DTYPES = {"fp32": (torch.float32, 3e-3), "bf16": (torch.bfloat16, 4e-2), "fp16": (torch.float16, 1e-2)}


def rel(got: torch.Tensor, want: torch.Tensor, floor: float = 1e-30) -> float:
    """||got - want|| / ||want||; ``floor`` bounds the denominator below for tensors near zero (the
    v4 fixture's FFN weights are stuck at zero, so its ffn_x_prev state is ~1e-7)."""
    want = want.double().cpu()
    return float((got.double().cpu() - want).norm() / max(float(want.norm()), floor))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", FILES)
def test_rwkvcpp_models_on_gpu(name: str, dtype_name: str) -> None:
    """rwkv.cpp's trained tiny models: one call and token by token on the GPU equal the CPU; the
    state and the decays stay float32 whatever the weights' dtype."""
    path = rwkvcpp_fixtures() / name
    dtype, tol = DTYPES[dtype_name]
    cpu = rwkvkit.load_model(path)
    gpu = rwkvkit.load_model(path, device="cuda", dtype=dtype)
    with torch.no_grad():
        want, want_state = cpu(PROMPT)
        whole, state = gpu(PROMPT)
        steps = None
        for token in PROMPT:
            last, steps = gpu([token], steps)
    assert whole.device.type == "cuda" and whole.dtype == torch.float32
    assert all(t.dtype == torch.float32 and t.is_cuda for t in state.tensors().values())
    assert rel(whole[0, -1], want[0, -1]) < tol and rel(last[0, -1], want[0, -1]) < tol
    for field, t in want_state.tensors().items():
        assert rel(state.tensors()[field], t, floor=1e-2) < tol, field
    decays = [p for n, p in gpu.named_parameters() if n.endswith(("time_decay", "time_first", "time_faaaa"))]
    assert all(p.dtype == torch.float32 for p in decays)
    expected = path.parent / f"expected-logits-{name.removeprefix('tiny-rwkv-').rsplit('-', 1)[0]}.bin"
    if expected.exists() and dtype == torch.float32 and "FP32" in name:
        assert rel(whole[0, -1], torch.from_numpy(np.fromfile(expected, dtype="<f4"))) < tol


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("pth", FILES[4]), ("safetensors", FILES[4]), ("hf", FILES[0])],  # Hugging Face output: RWKV-4 only
)
def test_every_format_loads_on_gpu(tmp_path: Path, fmt: str, name: str) -> None:
    src = rwkvcpp_fixtures() / name
    dst = convert(src, tmp_path / ("model" if fmt == "hf" else f"model.{fmt}"), fmt, dtype="bf16")
    with torch.no_grad():
        want, _ = rwkvkit.load_model(src)(PROMPT)
        got, _ = rwkvkit.load_model(dst, device="cuda", dtype=torch.bfloat16)(PROMPT)
    assert rel(got, want) < DTYPES["bf16"][1]


def test_the_cuda_kernels_are_the_backends() -> None:
    """On a GPU each op runs its Triton kernel (fla-core installed: pip install 'rwkvkit[gpu]')."""
    x = torch.zeros(1, device=CUDA)
    assert [op.BACKENDS.lookup(x).name for op in (wkv4, wkv5, wkv7)] == ["triton", "fla", "fla"]


@pytest.mark.parametrize("version", ["rwkv4", "rwkv5", "rwkv6", "rwkv7", "gpt"])
def test_random_models_forward_step_and_gradients(version: str) -> None:
    cpu = REAL[version]()
    gpu = REAL[version]().to(CUDA)
    tokens = torch.randint(0, 64, (3, 70), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, _ = cpu(tokens)
        got, _ = gpu(tokens.to(CUDA))
    assert rel(got, want) < 3e-3
    assert_step_matches_forward(gpu, 64, tol=2e-3)

    def loss(model):
        def f():
            logits, _ = model(tokens.to(next(model.parameters()).device))
            return logits.logsumexp(-1).mean()

        return f

    g_cpu, g_gpu = parameter_gradients(cpu, loss(cpu)), parameter_gradients(gpu, loss(gpu))
    for name, g in g_cpu.items():
        if g is not None and g.norm() > 0:
            assert rel(g_gpu[name], g) < 2e-2, name


@pytest.mark.parametrize("arch", ["rwkv4", "rwkv7"])
def test_training_with_bf16_autocast_on_gpu(data_dir: Path, tmp_path: Path, arch: str) -> None:
    from rwkvkit.train.loop import train

    cfg = tiny(
        data_dir,
        tmp_path / "run",
        arch=arch,
        device="cuda",
        precision="bf16",
        steps=30,
        eval_every=0,
        head_size=16,
    )
    summary = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert np.isfinite(summary["loss"]) and losses[-1] < losses[0] - 0.5, losses


def test_generate_on_gpu_matches_cpu() -> None:
    path = rwkvcpp_fixtures() / "tiny-rwkv-7v0-834K-FP32.bin"
    tok = rwkvkit.load_tokenizer("byte")
    texts = [
        rwkvkit.generate_text(
            rwkvkit.load_model(path, device=d), tok, "The ", max_tokens=24, temperature=0
        ).text
        for d in ("cpu", "cuda")
    ]
    assert texts[0] == texts[1]
