"""The fast inference paths (rwkvkit.ops.linear, rwkvkit.inference) against the plain modules.

Tolerances, and why:
- fp32: the fast layers compute the same sums in another memory order, and the lean one-token
  step the same operations in fewer calls: 1e-5 absolute on logits of size ~1-10 (float32
  rounding of sums over a few hundred terms).
- bf16 / fp16: the plain model in the same dtype already differs from fp32 by its rounding; the
  fast model must stay within 1.5x of that difference (plus a small floor), i.e. be no less
  accurate than the plain 16-bit path, whatever kernel it uses.
- int8: compared (a) with the same model whose weights are the dequantized int8 values, run in
  fp32 by the plain modules (what the int8 path means), at the bf16 tolerance because the kernel
  takes bf16 activations; (b) with the float model, where the quantization error itself shows:
  bounded loosely (logit error < 5% of the logits' spread) to catch a broken scale or layout.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rwkvkit import load_model
from rwkvkit.errors import RwkvkitError
from rwkvkit.inference import optimize_for_inference
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.ops.linear import FastLinear, Int8Linear, int8_linear_reference, quantize_int8
from rwkvkit.testing import random_rwkv4, random_rwkv4_state_dict

ROOT = Path(__file__).resolve().parents[1]
# n_embd 64 and ffn 128 are multiples of 32 (the int8 kernel runs); 40 / 72 exercise the fallback.
CONFIGS = [
    RWKV4Config(vocab_size=300, n_layer=3, n_embd=64, ffn_dim=128),
    RWKV4Config(vocab_size=97, n_layer=2, n_embd=40, ffn_dim=72, chunk_len=5),
]


def run_split(model: nn.Module, tokens: torch.Tensor, prefix: int) -> tuple[torch.Tensor, object]:
    """Prefill ``prefix`` tokens, then decode the rest one at a time (the lean path)."""
    with torch.no_grad():
        logits, state = model(tokens[:, :prefix])
        outs = [logits]
        for t in range(prefix, tokens.shape[1]):
            logits, state = model(tokens[:, t : t + 1], state)
            outs.append(logits)
    return torch.cat(outs, dim=1), state


def as_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """What load_model(dtype=...) gives: weights in dtype, time_decay/time_first kept in fp32."""
    model = copy.deepcopy(model).to(dtype)
    for block in model.blocks:
        block.att.time_decay.data = block.att.time_decay.data.float()
        block.att.time_first.data = block.att.time_first.data.float()
    return model


@pytest.mark.parametrize("shape", [(64,), (1, 64), (8, 64), (2, 5, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fast_linear_matches_linear(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    ref = nn.Linear(64, 96, bias=False).to(dtype)
    fast = FastLinear.from_linear(copy.deepcopy(ref))
    x = torch.randn(shape).to(dtype)
    want = ref(x).float()
    got = fast(x)
    assert got.dtype == dtype and got.shape == want.shape
    # 16-bit: one rounding of the output (and a different summation order) apart.
    tol = 1e-5 if dtype == torch.float32 else 2e-2 * want.abs().max().item()
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=0)
    assert fast.state_dict().keys() == ref.state_dict().keys()
    torch.testing.assert_close(fast.weight, ref.weight, atol=0, rtol=0)  # same values, new layout


def test_fast_linear_gradients_match() -> None:
    torch.manual_seed(0)
    ref = nn.Linear(32, 48)
    fast = FastLinear.from_linear(copy.deepcopy(ref))
    x = torch.randn(3, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    ref(x).square().sum().backward()
    fast(x2).square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, atol=1e-5, rtol=0)


def test_quantize_int8_roundtrip() -> None:
    torch.manual_seed(0)
    w = torch.randn(50, 64) * torch.rand(50, 1) * 3
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert torch.equal(scale.to(torch.bfloat16).float(), scale)  # exact in bf16, for the kernel
    assert (scale * 127 >= w.abs().amax(dim=1)).all()  # no clipping
    # Round to nearest: every weight is within half a step of its int8 value.
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("in_features", [64, 40])
def test_int8_linear_matches_reference(in_features: int) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(in_features, 96, bias=False)
    layer = Int8Linear.from_linear(lin)
    assert layer.use_kernel == (in_features % 32 == 0)
    for shape in [(1, in_features), (7, in_features), (2, 3, in_features), (40, in_features)]:
        x = torch.randn(shape)
        want = int8_linear_reference(x, layer.weight_int8, layer.weight_scale)
        got = layer(x)
        assert got.dtype == x.dtype and got.shape == want.shape
        # bf16 activations in the kernel: ~2^-8 relative per input, summed over in_features terms.
        torch.testing.assert_close(got, want, atol=2e-2 * want.abs().max().item(), rtol=0)
        # The quantization error itself, against the float weights: a few percent at most.
        assert (got - lin(x)).abs().max() < 0.05 * lin(x).abs().max()


def test_int8_linear_refuses_bias() -> None:
    with pytest.raises(ValueError, match="bias"):
        Int8Linear.from_linear(nn.Linear(32, 32))


@pytest.mark.parametrize("config", CONFIGS, ids=["w64", "w40"])
def test_fast_fp32_equals_plain(config: RWKV4Config) -> None:
    ref = random_rwkv4(config, seed=1)
    fast = optimize_for_inference(copy.deepcopy(ref))
    assert fast.fast_decode and isinstance(fast.head, FastLinear)
    tokens = torch.randint(0, config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, want_state = ref(tokens)
    got, got_state = run_split(fast, tokens, prefix=4)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for name, t in got_state.tensors().items():
        torch.testing.assert_close(t, want_state.tensors()[name], atol=1e-5, rtol=0, msg=name)


def test_lean_step_leaves_state_untouched_and_matches_batch_rows() -> None:
    config = CONFIGS[0]
    model = optimize_for_inference(random_rwkv4(config, seed=2))
    with torch.no_grad():
        _, state = model(torch.tensor([[1, 2, 3], [4, 5, 6]]))
        before = state.clone()
        logits, _ = model(torch.tensor([[7], [8]]), state)
        for name, t in state.tensors().items():
            assert torch.equal(t, before.tensors()[name]), name
        # Row b of a batch is the same as that sequence alone.
        single, _ = model(torch.tensor([[8]]), state.select([1]))
    torch.testing.assert_close(single[0], logits[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fast_16bit_no_less_accurate_than_plain(dtype: torch.dtype) -> None:
    config = CONFIGS[0]
    ref = random_rwkv4(config, seed=3)
    tokens = torch.randint(0, config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, _ = ref(tokens)
    plain, _ = run_split(as_dtype(ref, dtype), tokens, prefix=4)
    fast, _ = run_split(optimize_for_inference(as_dtype(ref, dtype)), tokens, prefix=4)
    plain_err = (plain - want).abs().max().item()
    fast_err = (fast - want).abs().max().item()
    assert fast.dtype == torch.float32
    assert fast_err <= 1.5 * plain_err + 1e-3, (fast_err, plain_err)


@pytest.mark.parametrize("config", CONFIGS, ids=["w64", "w40"])
def test_int8_model_matches_dequantized_reference(config: RWKV4Config) -> None:
    ref = random_rwkv4(config, seed=4)
    deq = copy.deepcopy(ref)  # the plain model holding exactly the int8 weights, run in fp32
    with torch.no_grad():
        for module in deq.modules():
            if isinstance(module, nn.Linear):
                q, s = quantize_int8(module.weight)
                module.weight.copy_(q.float() * s[:, None])
    fast = optimize_for_inference(copy.deepcopy(ref), quantize="int8")
    assert isinstance(fast.head, Int8Linear)
    tokens = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, _ = deq(tokens)
        float_logits, _ = ref(tokens)
    got, _ = run_split(fast, tokens, prefix=3)
    spread = float_logits.abs().max().item()
    # bf16 activations where the kernel runs; exact fp32 (same as deq) where it falls back.
    tol = 2e-2 * spread if fast.head.use_kernel else 1e-4
    torch.testing.assert_close(got, want, atol=tol, rtol=0)
    assert (got - float_logits).abs().max() < 0.05 * spread


def test_load_model_quantize(tmp_path: Path) -> None:
    config = CONFIGS[0]
    path = tmp_path / "m.pth"
    torch.save(random_rwkv4_state_dict(config, seed=5), path)
    model = load_model(path, quantize="int8")
    assert isinstance(model.blocks[0].ffn.key, Int8Linear)
    assert model.quantization == "int8"
    logits, _ = model([1, 2, 3])
    assert logits.shape == (1, 3, config.vocab_size) and torch.isfinite(logits).all()
    with pytest.raises(RwkvkitError, match="quantize"):
        load_model(path, quantize="int4")


def test_last_only_is_the_last_position() -> None:
    model = random_rwkv4(CONFIGS[0], seed=6)
    tokens = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        full, s1 = model(tokens)
        last, s2 = model(tokens, last_only=True)
    assert last.shape == (1, 1, CONFIGS[0].vocab_size)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(s1.wkv_num, s2.wkv_num, atol=0, rtol=0)


def test_bench_cli_runs_on_a_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rwkvkit", "bench", "--shape", "tiny", "--contenders", "fp32,int8,plain-fp32",
         "--threads", "1", "--rounds", "1", "--decode-tokens", "2", "--prefill", "8",
         "--reference", "rwkvkit fp32 (plain modules)", "--workdir", str(tmp_path), "--json", str(out)],
        cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "rwkvkit int8, B=8" in proc.stdout and "prefill, 8 tokens" in proc.stdout
    assert out.exists()


def _other_version_models() -> list[tuple[str, nn.Module]]:
    import inspect

    from rwkvkit import testing
    from rwkvkit.models import rwkv5, rwkv6, rwkv7

    out = []
    for name, make, cfg_cls in [
        ("v5", testing.random_rwkv5, rwkv5.RWKV5Config),
        ("v6", testing.random_rwkv6, rwkv6.RWKV6Config),
        ("v7", testing.random_rwkv7, rwkv7.RWKV7Config),
    ]:
        params = inspect.signature(cfg_cls).parameters
        kw = {"vocab_size": 100, "n_layer": 2, "n_embd": 64}
        kw.update({k: v for k, v in (("ffn_dim", 128), ("head_size", 32)) if k in params})
        out.append((name, make(cfg_cls(**kw))))
    return out


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_fast_layers_on_rwkv5_6_7(quantize: str | None) -> None:
    """The layer swap is version-agnostic: v5/v6/v7 keep their numbers (fp32) or stay close (int8)."""
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    for name, ref in _other_version_models():
        fast = optimize_for_inference(copy.deepcopy(ref), quantize=quantize)
        with torch.no_grad():
            want, _ = ref(tokens)
            got, state = fast(tokens[:, :3])
            step, _ = fast(tokens[:, 3:4], state)
        got = torch.cat([got, step], dim=1)
        spread = want.abs().max().item()
        tol = 1e-5 if quantize is None else 0.05 * spread
        torch.testing.assert_close(got, want[:, :4], atol=tol, rtol=0, msg=name)
