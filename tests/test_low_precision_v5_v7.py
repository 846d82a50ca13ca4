"""RWKV-5/6/7 run with bf16 and fp16 weights: the WKV state and logits stay float32, the chunked and
recurrent modes still agree, and the logits stay near the fp32 model's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rwkvkit
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.testing import random_rwkv5_state_dict, random_rwkv6_state_dict, random_rwkv7_state_dict

pytestmark = pytest.mark.usefixtures("single_thread")

CASES = {
    "5.2": (RWKV5Config(vocab_size=80, n_layer=2, n_embd=64, ffn_dim=128, head_size=16), random_rwkv5_state_dict),
    "6": (RWKV6Config(vocab_size=80, n_layer=2, n_embd=64, ffn_dim=128, head_size=16, mix_lora=8, decay_lora=8),
          random_rwkv6_state_dict),
    "7": (RWKV7Config(vocab_size=80, n_layer=2, n_embd=64, ffn_dim=128, head_size=16, decay_lora=8, iclr_lora=8,
                      value_lora=8, gate_lora=8), random_rwkv7_state_dict),
}  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("version", list(CASES))
def test_half_precision_weights(tmp_path: Path, version: str, dtype: torch.dtype) -> None:
    config, make = CASES[version]
    torch.save(make(config, seed=1), tmp_path / "m.pth")
    full = rwkvkit.load_model(tmp_path / "m.pth")
    half = rwkvkit.load_model(tmp_path / "m.pth", dtype=dtype)
    tokens = torch.randint(0, 80, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, _ = full(tokens)
        got, state = half(tokens)
        steps, s = [], None
        for t in range(tokens.shape[1]):
            out, s = half(tokens[:, t : t + 1], s)
            steps.append(out)
    assert got.dtype == torch.float32 and all(t.dtype == torch.float32 for t in state.tensors().values())
    # 8 (bf16) or 11 (fp16) mantissa bits on weights and activations: logits of size ~4 move by ~1e-2.
    tol = 0.15 if dtype == torch.bfloat16 else 0.02  # measured: <= 0.065 and <= 0.008
    assert (got - want).abs().max() < tol
    assert (torch.cat(steps, dim=1) - got).abs().max() < tol
