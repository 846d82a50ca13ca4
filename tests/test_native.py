"""The native CPU kernels (rwkvkit/csrc/cpu_kernels.cpp via rwkvkit/ops/native.py) against their
definitions in PyTorch, and whole models with them against the portable PyTorch path.

Tolerances, and why:
- float32 products and WKV steps: 1e-5 relative to the outputs' size (the same sums in another
  order, and e^x within 2 ulp in the WKV kernels);
- bf16 / fp16 products: the inputs rounded as the kernel rounds them, then one rounding of the
  output to bf16 (2^-8) or fp16 (2^-11) apart;
- int8 / int4 products: (a) exactly the integer computation they define, emulated here in
  PyTorch (activations rounded to int8 per block of 64, as llama.cpp's q8_0 does), at float32
  tolerance; (b) against the float product on the same weights, within 2% of the outputs' size:
  the activation rounding is at most half a step of absmax/127 per input;
- whole models, native against portable: fp32 1e-5; 16-bit within 1.5x the portable path's own
  distance from fp32; int8 / int4 against the plain model holding the same quantized weights:
  within 4x the portable path's distance (its bf16 activations are rounded to 2^-8 of each value,
  the native ones to int8 per block of 64, up to 2^-8 of the block's largest: several times more
  for the smaller values) plus 1% of the logits' spread.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from rwkvkit import testing
from rwkvkit.inference import optimize_for_inference
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.ops import native, wkv4, wkv5, wkv7
from rwkvkit.ops.linear import dequantize_int4, pack_int4, pack_int8, quantize_int4, quantize_int8

ops = native.load(wait=True)
pytestmark = pytest.mark.skipif(
    ops is None, reason=f"native kernels unavailable: {native.unsupported_reason()}"
)


def scale_of(t: torch.Tensor) -> float:
    return t.abs().max().item() + 1e-6


@pytest.mark.parametrize("shape", [(1, 768, 96), (3, 100, 37), (5, 64, 16), (17, 40, 20), (8, 256, 1000)])
def test_float_products(shape: tuple[int, int, int]) -> None:
    M, K, N = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(M, K, generator=gen)
    w = torch.randn(N, K, generator=gen) / K**0.5
    want = x.double() @ w.double().t()
    got = ops.linear_f32(x, w)
    torch.testing.assert_close(got.double(), want, atol=1e-5 * scale_of(want), rtol=0)
    # bf16: the kernel reads bf16 inputs and weights, sums in float32, rounds the output to bf16
    xb, wb = x.bfloat16(), w.bfloat16()
    want = xb.double() @ wb.double().t()
    got = ops.linear_bf16(xb, wb)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, atol=2**-8 * scale_of(want), rtol=0)
    # fp16: float16 weights widened to float32, float32 inputs, an fp16 output
    xh, wh = x.half(), w.half()
    want = xh.double() @ wh.double().t()
    got = ops.linear_f16(xh, wh)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.double(), want, atol=2**-11 * scale_of(want) + 1e-5, rtol=0)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the integer kernels do to x (M, K): per block of 64, scale = absmax / 127, q = round(x / scale)."""
    M, K = x.shape
    blocks = x.float().reshape(M, K // 64, 64)
    scale = blocks.abs().amax(dim=-1) / 127
    inv = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
    q = torch.round(blocks * inv[..., None]).clamp(-127, 127)
    return q, scale


def int_product(x: torch.Tensor, w_of_block: torch.Tensor) -> torch.Tensor:
    """sum over blocks b of scale_b * (q_b . w_b), in float64. w_of_block (N, K/64, 64) float64."""
    q, scale = quantize_activations(x)
    per_block = torch.einsum("mbk,nbk->mnb", q.double(), w_of_block)  # (M, N, K/64)
    return (per_block * scale.double()[:, None, :]).sum(-1)


@pytest.mark.parametrize("shape", [(1, 768, 96), (3, 128, 37), (8, 64, 200), (16, 256, 50277 % 97 + 16)])
def test_int8_product_is_its_definition(shape: tuple[int, int, int]) -> None:
    M, K, N = shape
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(M, K, generator=gen)
    w = torch.randn(N, K, generator=gen) / K**0.5
    q, s = quantize_int8(w)
    packed, padded_scale = pack_int8(q, s)
    got = ops.linear_q8(x, packed, padded_scale, N)
    assert got.shape == (M, N)
    exact = int_product(x, q.double().reshape(N, K // 64, 64)) * s.double()
    torch.testing.assert_close(got.double(), exact, atol=1e-5 * scale_of(exact), rtol=0)
    float_product = x.double() @ (q.double() * s.double()[:, None]).t()
    assert (got.double() - float_product).abs().max() < 0.02 * scale_of(float_product)
    for dtype in (torch.bfloat16, torch.float16):  # the output takes the input's dtype
        assert ops.linear_q8(x.to(dtype), packed, padded_scale, N).dtype == dtype


@pytest.mark.parametrize("shape", [(1, 768, 96), (3, 128, 37), (8, 64, 200), (16, 256, 33)])
def test_int4_product_is_its_definition(shape: tuple[int, int, int]) -> None:
    M, K, N = shape
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(M, K, generator=gen)
    w = torch.randn(N, K, generator=gen) / K**0.5
    q, scale, minimum = quantize_int4(w)
    packed, scale_min = pack_int4(q, scale, minimum)
    got = ops.linear_q4(x, packed, scale_min, N)
    deq = q.double().reshape(N, K // 64, 64) * scale.double()[..., None] + minimum.double()[..., None]
    exact = int_product(x, deq)
    torch.testing.assert_close(got.double(), exact, atol=1e-5 * scale_of(exact), rtol=0)
    float_product = x.double() @ deq.reshape(N, K).t()
    assert (got.double() - float_product).abs().max() < 0.02 * scale_of(float_product)


def test_threads_do_not_change_results() -> None:
    """Rows are split between threads whole: one thread or two compute the same bits."""
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(2, 768, generator=gen), torch.randn(3072, 768, generator=gen)
    q, s = quantize_int8(w)
    packed, ps = pack_int8(q, s)
    saved = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(
                (
                    ops.linear_f32(x, w),
                    ops.linear_bf16(x.bfloat16(), w.bfloat16()),
                    ops.linear_q8(x, packed, ps, 3072),
                )
            )
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_wkv_steps_match_pytorch() -> None:
    gen = torch.Generator().manual_seed(4)
    B, H, N = 3, 4, 32

    def r(*shape: int, s: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * s

    # RWKV-7
    args = (r(B, H, N), -torch.rand(B, H, N, generator=gen) * 0.6, r(B, H, N), r(B, H, N),
            -F.normalize(r(B, H, N), dim=-1), F.normalize(r(B, H, N), dim=-1) * 0.5, r(B, H, N, N, s=0.3))  # fmt: skip
    want_y, want_s = wkv7.wkv7_step(*args)
    out = torch.empty_like(args[-1])
    y = ops.wkv7_step(*args, out)
    torch.testing.assert_close(y, want_y, atol=1e-5 * scale_of(want_y), rtol=0)
    torch.testing.assert_close(out, want_s, atol=1e-5 * scale_of(want_s), rtol=0)
    state = args[-1].clone()
    ops.wkv7_step(*args[:-1], state, state)  # in place
    torch.testing.assert_close(state, want_s, atol=1e-5 * scale_of(want_s), rtol=0)
    # RWKV-5/6: decay per token (B, H, N) or per head (H, N)
    for log_w in (-torch.rand(B, H, N, generator=gen) * 3, -torch.rand(H, N, generator=gen) * 3):
        args5 = (r(B, H, N), log_w, r(B, H, N), r(B, H, N), r(H, N), r(B, H, N, N, s=0.3))
        want_y, want_s = wkv5.wkv5_step(*args5)
        out = torch.empty_like(args5[-1])
        y = ops.wkv5_step(*args5, out)
        torch.testing.assert_close(y, want_y, atol=1e-5 * scale_of(want_y), rtol=0)
        torch.testing.assert_close(out, want_s, atol=1e-5 * scale_of(want_s), rtol=0)
    # RWKV-4, from the empty state and from a later one
    C = 48
    w, u = -torch.exp(r(C)), r(C)
    for state in (wkv4.initial_wkv_state(B, C), (r(B, C), torch.rand(B, C, generator=gen) + 1, r(B, C, s=5))):
        k, v = r(B, C, s=3), r(B, C)
        want_out, want_state = wkv4.wkv4_step(w, u, k, v, state)
        got_out, *got_state = ops.wkv4_step(w, u, k, v, *state)
        torch.testing.assert_close(got_out, want_out, atol=1e-5 * scale_of(want_out), rtol=0)
        for g, t in zip(got_state, want_state, strict=True):
            torch.testing.assert_close(g, t, atol=1e-5 * scale_of(t), rtol=1e-5)


def test_wkv_sequences_match_their_definitions() -> None:
    """The token-by-token native sequence forms (prefill) against the PyTorch definitions, from a
    non-empty state, batch 2, 70 tokens; through the ops' dispatch (which picks them on the CPU)."""
    gen = torch.Generator().manual_seed(7)
    B, T, H, N = 2, 70, 3, 32

    def r(*shape: int, s: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * s

    def close(got: torch.Tensor, want: torch.Tensor) -> None:
        torch.testing.assert_close(got, want, atol=1e-5 * scale_of(want), rtol=0)

    log_w = -torch.rand(B, T, H, N, generator=gen) * 0.6 - 0.01
    kk = F.normalize(r(B, T, H, N), dim=-1)
    args7 = (r(B, T, H, N), log_w, r(B, T, H, N), r(B, T, H, N), -kk, kk * torch.rand(B, T, H, N, generator=gen),
             r(B, H, N, N, s=0.3))  # fmt: skip
    assert wkv7.BACKENDS.lookup(args7[0]).name == "native"
    for got, want in zip(wkv7.wkv7(*args7), wkv7.wkv7_reference(*args7), strict=True):
        close(got, want)
    # RWKV-6: a decay per token; RWKV-5: one per head, broadcast over the tokens
    for decay in (log_w * 3, (-torch.rand(H, N, generator=gen) * 3).expand(B, T, H, N)):
        args5 = (r(B, T, H, N), decay, r(B, T, H, N), r(B, T, H, N), r(H, N), r(B, H, N, N, s=0.3))
        assert wkv5.BACKENDS.lookup(args5[0]).name == "native"
        for got, want in zip(wkv5.wkv5(*args5), wkv5.wkv5_reference(*args5), strict=True):
            close(got, want)
    C = 48
    w, u = -torch.exp(r(C)), r(C)
    for state in (wkv4.initial_wkv_state(B, C), (r(B, C), torch.rand(B, C, generator=gen) + 1, r(B, C, s=5))):
        k, v = r(B, T, C, s=3), r(B, T, C)
        got_out, got_state = wkv4.wkv4(w, u, k, v, state)
        want_out, want_state = wkv4.wkv4_reference(w, u, k, v, state)
        close(got_out, want_out)
        for g, t in zip(got_state, want_state, strict=True):
            torch.testing.assert_close(g, t, atol=1e-5 * scale_of(t), rtol=1e-5)


V = 97
MODELS = {
    "4": (RWKV4Config(vocab_size=V, n_layer=2, n_embd=64, ffn_dim=128), testing.random_rwkv4),
    "5": (RWKV5Config(vocab_size=V, n_layer=2, n_embd=64, ffn_dim=128, head_size=32), testing.random_rwkv5),
    "6": (RWKV6Config(vocab_size=V, n_layer=2, n_embd=64, ffn_dim=128, head_size=32, mix_lora=8, decay_lora=16),
          testing.random_rwkv6),
    "7": (RWKV7Config(vocab_size=V, n_layer=2, n_embd=64, ffn_dim=128, head_size=32, decay_lora=16, iclr_lora=16,
                      value_lora=16, gate_lora=16), testing.random_rwkv7),
}  # fmt: skip


def decode(model: torch.nn.Module, tokens: torch.Tensor, portable: bool) -> torch.Tensor:
    """Prefill 4 tokens, then step through the rest; all logits."""
    with torch.no_grad(), native.disabled() if portable else _nothing():
        logits, state = model(tokens[:, :4])
        out = [logits]
        for t in range(4, tokens.shape[1]):
            step, state = model.step(tokens[:, t], state)
            out.append(step[:, None])
    return torch.cat(out, dim=1)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("variant", ["fp32", "bf16", "fp16", "int8", "int4"])
@pytest.mark.parametrize("version", list(MODELS))
def test_native_model_matches_portable(version: str, variant: str) -> None:
    config, make = MODELS[version]
    ref = make(config, seed=5)
    if variant in ("bf16", "fp16"):
        ref = ref.to(torch.bfloat16 if variant == "bf16" else torch.float16)
    quantize = variant if variant.startswith("int") else None
    fast = optimize_for_inference(copy.deepcopy(ref), quantize=quantize)
    with native.disabled():
        portable = optimize_for_inference(copy.deepcopy(ref), quantize=quantize)
    tokens = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(6))
    got, want = decode(fast, tokens, portable=False), decode(portable, tokens, portable=True)
    spread = scale_of(want)
    if variant == "fp32":
        torch.testing.assert_close(got, want, atol=1e-5 * spread, rtol=0)
    elif variant in ("bf16", "fp16"):
        exact = decode(make(config, seed=5), tokens, portable=True)
        portable_err = (want - exact).abs().max().item()
        assert (got - exact).abs().max().item() <= 1.5 * portable_err + 1e-3
    else:  # against the plain model holding exactly the quantized weights, run in float32
        exact = decode(dequantized(ref, variant), tokens, portable=True)
        native_err, portable_err = (got - exact).abs().max().item(), (want - exact).abs().max().item()
        assert native_err <= 4 * portable_err + 0.01 * spread, (native_err, portable_err)


def dequantized(model: torch.nn.Module, variant: str) -> torch.nn.Module:
    model = copy.deepcopy(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                if variant == "int8":
                    q, s = quantize_int8(module.weight)
                    module.weight.copy_(q.float() * s[:, None])
                else:
                    module.weight.copy_(dequantize_int4(*quantize_int4(module.weight)))
    return model
