"""The inference path (rwkvkit/inference.py: what ``load_model`` applies) against the plain modules,
for every RWKV version, and the lifecycle of the step constants it prepares.

Tolerances, and why:
- fp32: the fast layers compute the same sums in another memory order, and the prepared step
  the same operations on constants derived once: 1e-5 on logits of size ~1-10 (float32 rounding
  of sums over a few hundred terms).
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
import mmap
from pathlib import Path

import pytest
import torch
from torch import nn

from rwkvkit import load_model, testing
from rwkvkit.errors import RwkvkitError
from rwkvkit.inference import HUGE_PAGE, huge_page_copy, optimize_for_inference
from rwkvkit.models.common import StepConstants
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.ops.linear import FastLinear, Int8Linear, quantize_int8
from rwkvkit.testing import random_rwkv4, random_rwkv4_state_dict, step_by_step

ROOT = Path(__file__).resolve().parents[1]
# n_embd 64 and ffn 128 are multiples of 32 (the int8 kernel runs); 40 / 72 exercise the fallback.
CONFIGS = [
    RWKV4Config(vocab_size=300, n_layer=3, n_embd=64, ffn_dim=128),
    RWKV4Config(vocab_size=97, n_layer=2, n_embd=40, ffn_dim=72, chunk_len=5),
]
# One small model of every version: (config, random model, random state dict).
VERSIONS = {
    "4": (CONFIGS[0], testing.random_rwkv4, testing.random_rwkv4_state_dict),
    "5": (RWKV5Config(vocab_size=100, n_layer=2, n_embd=64, ffn_dim=128, head_size=32, chunk_len=8),
          testing.random_rwkv5, testing.random_rwkv5_state_dict),
    "6": (RWKV6Config(vocab_size=100, n_layer=2, n_embd=64, ffn_dim=128, head_size=32, mix_lora=8,
                      decay_lora=8, chunk_len=8), testing.random_rwkv6, testing.random_rwkv6_state_dict),
    "7": (RWKV7Config(vocab_size=100, n_layer=2, n_embd=64, ffn_dim=128, head_size=32, decay_lora=8,
                      iclr_lora=8, value_lora=8, gate_lora=8, chunk_len=8),
          testing.random_rwkv7, testing.random_rwkv7_state_dict),
}  # fmt: skip
FP32_TOL = 1e-5


def run_split(model: nn.Module, tokens: torch.Tensor, prefix: int) -> tuple[torch.Tensor, object]:
    """Prefill ``prefix`` tokens, then decode the rest one at a time with ``model.step``."""
    with torch.no_grad():
        logits, state = model(tokens[:, :prefix])
        steps, state = step_by_step(model, tokens[:, prefix:], state)
    return torch.cat([logits, steps], dim=1), state


def as_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """What load_model(dtype=...) gives: weights in dtype, time_decay/time_first kept in fp32."""
    model = copy.deepcopy(model).to(dtype)
    for block in model.blocks:
        block.att.time_decay.data = block.att.time_decay.data.float()
        block.att.time_first.data = block.att.time_first.data.float()
    return model


def prepared(model: nn.Module) -> list[bool]:
    return [m.prepared for m in model.modules() if isinstance(m, StepConstants)]


@pytest.mark.parametrize("version", list(VERSIONS))
def test_load_model_equals_plain_modules(tmp_path: Path, version: str) -> None:
    """What users get from load_model (fast layers, prepared step) computes what the plain model
    computes: a whole forward, and a prefill continued token by token from its state."""
    config, make, make_sd = VERSIONS[version]
    torch.save(make_sd(config, seed=1), tmp_path / "m.pth")
    fast = load_model(tmp_path / "m.pth")
    plain = make(config, seed=1)
    assert isinstance(fast.head, FastLinear) and all(prepared(fast)) and not any(prepared(plain))
    tokens = torch.randint(0, config.vocab_size, (3, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, want_state = plain(tokens)
        whole, _ = fast(tokens)
    got, got_state = run_split(fast, tokens, prefix=5)
    torch.testing.assert_close(whole, want, atol=FP32_TOL, rtol=FP32_TOL)
    torch.testing.assert_close(got, want, atol=FP32_TOL, rtol=FP32_TOL)
    for name, t in got_state.tensors().items():
        torch.testing.assert_close(t, want_state.tensors()[name], atol=FP32_TOL, rtol=FP32_TOL, msg=name)


@pytest.mark.parametrize("config", CONFIGS, ids=["w64", "w40"])
def test_fast_fp32_equals_plain(config: RWKV4Config) -> None:
    ref = random_rwkv4(config, seed=1)
    fast = optimize_for_inference(copy.deepcopy(ref))
    assert all(prepared(fast)) and isinstance(fast.head, FastLinear)
    tokens = torch.randint(0, config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, want_state = ref(tokens)
    got, got_state = run_split(fast, tokens, prefix=4)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for name, t in got_state.tensors().items():
        torch.testing.assert_close(t, want_state.tensors()[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_step_leaves_state_untouched_and_matches_batch_rows(version: str) -> None:
    config, make, _ = VERSIONS[version]
    model = optimize_for_inference(make(config, seed=2))
    with torch.no_grad():
        _, state = model(torch.tensor([[1, 2, 3], [4, 5, 6]]))
        before = state.clone()
        logits, _ = model.step(torch.tensor([7, 8]), state)
        for name, t in state.tensors().items():
            assert torch.equal(t, before.tensors()[name]), name
        # Row b of a batch is the same as that sequence alone.
        single, _ = model.step(torch.tensor([8]), state.select([1]))
        one, _ = model(torch.tensor([[8]]), state.select([1]))  # T = 1 through forward: the step
    assert logits.shape == (2, config.vocab_size)
    torch.testing.assert_close(single[0], logits[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(one[:, 0], single, atol=0, rtol=0)


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
    # bf16 (int8pack) or int8 (native) activations where a kernel runs; exact fp32 (same as deq)
    # where it falls back.
    tol = 2e-2 * spread if fast.head.kernel != "reference" else 1e-4
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
        load_model(path, quantize="int3")


@pytest.mark.parametrize("version", list(VERSIONS))
def test_last_only_is_the_last_position(version: str) -> None:
    config, make, _ = VERSIONS[version]
    model = make(config, seed=6)
    tokens = torch.tensor([[5, 6, 7, 8], [9, 1, 2, 3]])
    with torch.no_grad():
        full, s1 = model(tokens)
        last, s2 = model(tokens, last_only=True)
    assert last.shape == (2, 1, config.vocab_size)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-6, rtol=0)
    for name, t in s1.tensors().items():
        torch.testing.assert_close(s2.tensors()[name], t, atol=0, rtol=0)


@pytest.mark.parametrize("quantize", [None, "int8"])
@pytest.mark.parametrize("version", ["5", "6", "7"])
def test_fast_layers_on_rwkv5_6_7(version: str, quantize: str | None) -> None:
    """The layer swap is version-agnostic: v5/v6/v7 keep their numbers (fp32) or stay close (int8)."""
    config, make, _ = VERSIONS[version]
    ref = make(config, seed=0)
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    fast = optimize_for_inference(copy.deepcopy(ref), quantize=quantize)
    with torch.no_grad():
        want, _ = ref(tokens)
        got, state = fast(tokens[:, :3])
        step, _ = fast.step(tokens[:, 3], state)
    got = torch.cat([got, step[:, None]], dim=1)
    spread = want.abs().max().item()
    tol = 1e-5 if quantize is None else 0.05 * spread
    torch.testing.assert_close(got, want[:, :4], atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("version", ["5", "6", "7"])
def test_half_precision_weights(tmp_path: Path, version: str, dtype: torch.dtype) -> None:
    """RWKV-5/6/7 with 16-bit weights: the WKV state and logits stay float32, the chunked forward and
    the step still agree, and the logits stay near the fp32 model's."""
    config, _, make_sd = VERSIONS[version]
    torch.save(make_sd(config, seed=1), tmp_path / "m.pth")
    full = load_model(tmp_path / "m.pth")
    half = load_model(tmp_path / "m.pth", dtype=dtype)
    tokens = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, _ = full(tokens)
        got, state = half(tokens)
        steps, _ = step_by_step(half, tokens)
    assert got.dtype == torch.float32 and all(t.dtype == torch.float32 for t in state.tensors().values())
    # 8 (bf16) or 11 (fp16) mantissa bits on weights and activations: logits of size ~4 move by ~1e-2.
    tol = 0.15 if dtype == torch.bfloat16 else 0.02  # measured: <= 0.065 and <= 0.008
    assert (got - want).abs().max() < tol
    assert (steps - got).abs().max() < tol


# The step constants (models/common.StepConstants): derived once, never stale through the module's API.


@pytest.mark.parametrize("version", list(VERSIONS))
def test_prepared_constants_follow_loads_and_moves(version: str) -> None:
    config, make, make_sd = VERSIONS[version]
    model = optimize_for_inference(make(config, seed=1))
    tokens = torch.tensor([3, 1, 4])
    # New weights through load_state_dict: the prepared model computes what a fresh one does.
    model.load_state_dict(make_sd(config, seed=2))
    assert all(prepared(model))
    other = make(config, seed=2)
    with torch.no_grad():
        got, _ = model.step(tokens)
        want, _ = other.step(tokens)
    torch.testing.assert_close(got, want, atol=FP32_TOL, rtol=FP32_TOL)
    # A move to another dtype derives them again, from the moved values.
    model.to(torch.bfloat16)
    other.to(torch.bfloat16)
    assert all(prepared(model))
    with torch.no_grad():
        got, _ = type(model).step(model, tokens)  # the model's own step (not rwkvkit.fused's)
        want, _ = other.step(tokens)
        fused, _ = model.step(tokens)  # repacked from the moved weights; float32 activations
    assert torch.equal(got, want)
    assert (fused - want).abs().max() < 0.15  # bf16 rounding, as in test_half_precision_weights
    # A copy owns its constants.
    twin = copy.deepcopy(model)
    assert all(prepared(twin))
    with torch.no_grad():
        assert torch.equal(type(twin).step(twin, tokens)[0], got)
        assert torch.equal(twin.step(tokens)[0], fused)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_gradients_reach_parameters_through_the_prepared_step(version: str) -> None:
    """With autograd recording, the step derives its constants afresh: the decay and mix vectors
    get gradients even on a prepared model in eval mode; train() drops the prepared copy."""
    config, make, _ = VERSIONS[version]
    model = optimize_for_inference(make(config, seed=1))
    # three tokens: RWKV-4's decay first acts on the state at the third
    logits, _ = step_by_step(model, torch.tensor([[3, 1, 4], [1, 5, 9]]))
    logits[:, -1].logsumexp(-1).sum().backward()
    att = model.blocks[1].att
    decay = att.w0 if version == "7" else att.time_decay
    mix = att.x_r if version == "7" else att.time_maa_r if version == "6" else att.time_mix_r
    for p in (decay, mix):
        assert p.grad is not None and p.grad.abs().sum() > 0
    model.train()
    assert not any(prepared(model))


@pytest.mark.parametrize("version", list(VERSIONS))
def test_step_traces_as_one_graph(version: str) -> None:
    """The prepared step has no host syncs and no data-dependent Python branches: torch.compile
    captures it whole (fullgraph), the precondition for compiled decoding and CUDA graphs. The
    eager backend checks the capture without paying for code generation."""
    config, make, _ = VERSIONS[version]
    model = optimize_for_inference(make(config, seed=1))
    torch._dynamo.reset()
    step = type(model).step.__get__(model)  # the model's own step, what compile_step compiles
    compiled = torch.compile(step, backend="eager", fullgraph=True)
    with torch.no_grad():
        _, state = model(torch.tensor([[1, 2, 3], [4, 5, 6]]))
        got, got_state = compiled(torch.tensor([7, 8]), state)
        want, want_state = step(torch.tensor([7, 8]), state)
    assert torch.equal(got, want) and torch.equal(got_state.att_x_prev, want_state.att_x_prev)


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="transparent huge pages are a Linux feature")
def test_large_weights_move_into_huge_page_memory() -> None:
    """huge_page_copy: the same values, 2 MB aligned; a column-major weight keeps its layout; and
    optimize_for_inference puts every weight of 2 MB or more there (shared tensors once)."""
    t = torch.randn(1024, 1024)
    copy_ = huge_page_copy(t)
    assert copy_ is not None and torch.equal(copy_, t) and copy_.data_ptr() % HUGE_PAGE == 0
    assert huge_page_copy(t.t()) is None
    config = RWKV4Config(vocab_size=2048, n_layer=1, n_embd=256, ffn_dim=1024)
    model = testing.random_rwkv4(config, seed=1)
    want, _ = model(torch.tensor([[1, 2, 3]]))
    model.head.weight = model.emb.weight  # a tied pair is copied once and stays tied
    want_tied, _ = model(torch.tensor([[1, 2, 3]]))
    optimize_for_inference(model)
    big = [t for t in [*model.parameters(), *model.buffers()] if t.numel() * t.element_size() >= HUGE_PAGE]
    assert big and all(t.data_ptr() % HUGE_PAGE == 0 for t in big if t.is_contiguous())
    assert model.head.weight is model.emb.weight
    with torch.no_grad():
        got, _ = model(torch.tensor([[1, 2, 3]]))
    torch.testing.assert_close(got, want_tied, atol=FP32_TOL, rtol=FP32_TOL)
    assert not torch.equal(want, want_tied)  # the tie changed the model: the check above can fail
