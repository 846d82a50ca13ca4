"""llama.cpp itself (llama-cpp-python, built from its sdist: benchmarks/setup.sh) on GGUF files: the
files rwkvkit writes run in llama.cpp with the logits llama.cpp gives on its own conversion of the same
weights, and rwkvkit reads the quantized files llama.cpp's quantizer makes (legacy and K-quants) with
the logits llama.cpp computes from them. Marked ``llama_cpp``; skipped where llama_cpp is absent.

Measured here (2-core Xeon, AVX-512/AMX; max |difference| of 16 positions' logits, logits std ~1):
llama.cpp on our file vs on its own conversion: 0 for f32, f16, bf16 and q8_0, both versions (the
tensors are the same bytes, tests/test_gguf.py); llama.cpp f32 vs the original weights in rwkvkit:
~8e-6 (RWKV-7), ~4e-6 (RWKV-6) at this small shape. The files llama.cpp's quantizer makes from an
RWKV-7 f32 file (K_QUANT_MODEL, logits std 1.01; rwkvkit vs llama.cpp on the same file / rwkvkit vs
the original weights): Q4_0 0.061 / 0.94, Q4_1 0.073 / 0.93, Q5_0 0.056 / 0.49, Q5_1 0.063 / 0.41,
Q8_0 0.059 / 0.065, Q2_K 0.083 / 2.7, Q3_K_M 0.088 / 1.5, Q4_K_M 0.14 / 0.85, Q5_K_M 0.079 / 0.38,
Q6_K 0.081 / 0.22, F16 0.0021 / 0.0026, BF16 0.018 / 0.020 (llama.cpp's own distance to the original
is as large or larger, it rounds the activations too, but for Q5_1's 0.39). The bounds are in the test below; benchmarks/gguf_agreement.py
measures the same at the 0.1B shape, beside the official package.
"""

from __future__ import annotations

from collections import Counter

import gguf
import numpy as np
import pytest
import torch
from llama_cpp_tools import llama_cpp_logits, llama_quantize
from world_models import TOKENS, logits

from rwkvkit.convert import convert
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.testing import random_rwkv7_state_dict

pytestmark = pytest.mark.llama_cpp
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (benchmarks/setup.sh builds it)")

# llama.cpp multiplies a quantized matrix with activations it quantizes too (to Q8_0/Q8_1 blocks, or
# Q8_K for the K-quants), rwkvkit with float32 activations: the difference is that of 8-bit activations,
# a relative step of 1/127 of a block's largest value. Bound: K_TOL * (1/127) * std(logits), as in
# test_gguf.py; F16/BF16 activations are rounded to the weights' type (steps 2^-11 and 2^-8).
K_TOL = 48
ACTIVATION_STEP = {"F32": 0.0, "F16": 2.0**-11, "BF16": 2.0**-8}
K_QUANT_MODEL = RWKV7Config(vocab_size=65536, n_layer=2, n_embd=256, ffn_dim=512, head_size=64, decay_lora=32,
                            iclr_lora=32, value_lora=32, gate_lora=64)  # fmt: skip  # rows of 256: K-quant blocks


@pytest.mark.parametrize("version", ["6", "7"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "q8_0"])
def test_llama_cpp_runs_our_file_as_its_own(tmp_path, llama_converted, world_models, version, dtype) -> None:
    ours = convert(world_models[version], tmp_path / "ours.gguf", "gguf", dtype)
    got = llama_cpp_logits(ours, TOKENS)
    want = llama_cpp_logits(llama_converted(version, dtype), TOKENS)
    assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("version", ["6", "7"])
def test_llama_cpp_f32_agrees_with_the_original_weights(llama_converted, world_models, version) -> None:
    got = llama_cpp_logits(llama_converted(version, "fp32"), TOKENS)
    want = logits(world_models[version]).numpy()
    assert np.abs(got - want).max() <= 1e-4


@pytest.fixture(scope="module")
def k_quant_source(tmp_path_factory) -> tuple:
    folder = tmp_path_factory.mktemp("kquant")
    torch.save(random_rwkv7_state_dict(K_QUANT_MODEL, seed=5), folder / "m.pth")
    return folder, convert(folder / "m.pth", folder / "f32.gguf", "gguf")


@pytest.mark.parametrize(
    ("ftype", "qtype"),
    [("Q4_0", "Q4_0"), ("Q4_1", "Q4_1"), ("Q5_0", "Q5_0"), ("Q5_1", "Q5_1"), ("Q8_0", "Q8_0"), ("Q2_K", "Q2_K"),
     ("Q3_K_M", "Q3_K"), ("Q4_K_M", "Q4_K"), ("Q5_K_M", "Q5_K"), ("Q6_K", "Q6_K"), ("F16", "F16"), ("BF16", "BF16")],
)  # fmt: skip
def test_rwkvkit_reads_llama_quantize_outputs(k_quant_source, ftype, qtype) -> None:
    folder, f32 = k_quant_source
    path = llama_quantize(f32, folder / f"{ftype}.gguf", ftype)
    kinds = Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors)
    assert kinds[qtype] >= 6, kinds  # the layers' matrices are of the type asked for
    ours = logits(path)
    theirs = llama_cpp_logits(path, TOKENS)
    step = ACTIVATION_STEP.get(qtype, 1 / 127)
    err = np.abs(ours.numpy() - theirs).max()
    bound = max(K_TOL * step * ours.std().item(), 1e-4)
    assert err <= bound, f"{ftype}: rwkvkit vs llama.cpp on the same file {err:.3g} (bound {bound:.3g})"
    original = logits(folder / "m.pth")
    assert (ours - original).abs().max() > 1e-3  # the file really is quantized
