"""Converting checkpoints: every format to every other keeps the logits (exactly in fp32, but for
the rwkv.cpp form, which stores decays transformed and so agrees to float32 rounding), 16-bit
outputs within their rounding, the Hugging Face config, and what rwkv.cpp files cannot hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rwkvkit
from rwkvkit.convert import convert
from rwkvkit.errors import RwkvkitError
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.testing import random_rwkv5_state_dict, random_rwkv6_state_dict, random_rwkv7_state_dict

TOKENS = [3, 1, 4, 1, 5, 9, 2, 6]
CASES = {
    "5.2": (RWKV5Config(vocab_size=60, n_layer=2, n_embd=32, ffn_dim=64, head_size=8), random_rwkv5_state_dict),
    "6": (RWKV6Config(vocab_size=60, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, mix_lora=4, decay_lora=6),
          random_rwkv6_state_dict),
    "7": (RWKV7Config(vocab_size=60, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, decay_lora=4, iclr_lora=4,
                      value_lora=4, gate_lora=8), random_rwkv7_state_dict),
}  # fmt: skip


def logits(path: Path, tokens: list[int] = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return rwkvkit.load_model(path)(tokens)[0]


@pytest.mark.parametrize("version", list(CASES))
def test_convert_round_trips(tmp_path: Path, version: str) -> None:
    config, make = CASES[version]
    src = tmp_path / "src.pth"
    torch.save(make(config, seed=2), src)
    want = logits(src)
    st = convert(src, tmp_path / "m.safetensors", "safetensors")
    assert torch.equal(logits(st), want)
    back = convert(st, tmp_path / "back.pth", "pth")
    assert torch.equal(logits(back), want)
    if version == "5.2":
        with pytest.warns(UserWarning, match="eps"):  # rwkv.cpp's v5 eps differs from BlinkDL's
            convert(src, tmp_path / "m.bin", "rwkvcpp")
        return
    cpp = convert(src, tmp_path / "m.bin", "rwkvcpp")
    torch.testing.assert_close(logits(cpp), want, atol=2e-5, rtol=2e-5)


def test_rwkvcpp_v5_eps_survives_safetensors_and_warns_for_pth(tmp_path: Path) -> None:
    config, make = CASES["5.2"]
    torch.save(make(config, seed=3), tmp_path / "src.pth")
    with pytest.warns(UserWarning):
        cpp = convert(tmp_path / "src.pth", tmp_path / "m.bin", "rwkvcpp")
    st = convert(cpp, tmp_path / "m.safetensors", "safetensors")
    assert rwkvkit.load_model(st).config.ln_x_eps == 1e-5
    torch.testing.assert_close(logits(st), logits(cpp), atol=0, rtol=0)
    with pytest.warns(UserWarning, match="cannot record"):
        convert(cpp, tmp_path / "m.pth", "pth")


def test_v5_1_has_no_rwkvcpp_form(tmp_path: Path) -> None:
    config = RWKV5Config(vocab_size=60, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, per_channel_decay=False,
                         log_bonus=True)  # fmt: skip
    torch.save(random_rwkv5_state_dict(config), tmp_path / "v51.pth")
    with pytest.raises(RwkvkitError, match=r"RWKV-5\.1"):
        convert(tmp_path / "v51.pth", tmp_path / "x.bin", "rwkvcpp")


def test_convert_chain_keepslogits(tmp_path: Path, small_pth: Path) -> None:
    """pth -> safetensors -> hf -> rwkvcpp -> pth: every hop is exact in fp32."""
    tokens = list(range(0, 97, 7))
    reference = logits(small_pth, tokens)
    hops = [
        ("safetensors", tmp_path / "m.safetensors"),
        ("hf", tmp_path / "hf"),
        ("rwkvcpp", tmp_path / "m.bin"),
        ("pth", tmp_path / "back.pth"),
    ]
    src: Path = small_pth
    for fmt, dst in hops:
        convert(src, dst, fmt)
        diff = (logits(dst, tokens) - reference).abs().max().item()
        # rwkv.cpp stores -exp(time_decay) and we take the log back: ~1 ulp on the decay.
        assert diff <= (1e-5 if fmt == "rwkvcpp" else 0.0), (fmt, diff)
        src = dst


@pytest.mark.parametrize(("dtype", "tol"), [("fp16", 2e-2), ("bf16", 1.5e-1)])
def test_convert_to_16_bit(tmp_path: Path, small_pth: Path, dtype: str, tol: float) -> None:
    tokens = list(range(1, 40, 3))
    reference = logits(small_pth, tokens)
    convert(small_pth, tmp_path / "half.pth", "pth", dtype=dtype)
    sd = torch.load(tmp_path / "half.pth", weights_only=True)
    assert sd["blocks.0.att.key.weight"].dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    assert (logits(tmp_path / "half.pth", tokens) - reference).abs().max() <= tol


def test_hf_output_config(tmp_path: Path, small_pth: Path, small_config: RWKV4Config) -> None:
    convert(small_pth, tmp_path / "hf", "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["rescale_every"] == 0 and cfg["architectures"] == ["RwkvForCausalLM"]
    assert (
        cfg["intermediate_size"] == small_config.ffn_dim and cfg["num_hidden_layers"] == small_config.n_layer
    )


def test_convert_keeps_the_source_dtype_and_refuses_to_overwrite(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from rwkvkit.errors import FileAccessError
    from rwkvkit.testing import random_rwkv4_state_dict

    src = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in random_rwkv4_state_dict(RWKV4Config(64, 1, 16, 32)).items()}, src)
    dst = convert(src, tmp_path / "out.safetensors", "safetensors")
    assert {t.dtype for t in load_file(dst).values()} == {torch.float16}
    with pytest.raises(FileAccessError, match="already exists; pass --force"):
        convert(src, dst, "safetensors", "fp32")
    convert(src, dst, "safetensors", "fp32", force=True)
    assert {t.dtype for t in load_file(dst).values()} == {torch.float32}
    hf = convert(src, tmp_path / "hf", "hf")
    with pytest.raises(FileAccessError, match="already holds a model"):
        convert(src, hf, "hf")
    bf16 = tmp_path / "bf16.pth"
    torch.save(
        {k: v.bfloat16() for k, v in random_rwkv4_state_dict(RWKV4Config(64, 1, 16, 32)).items()}, bf16
    )
    from rwkvkit.formats.rwkvcpp import read_rwkvcpp

    header, _ = read_rwkvcpp(convert(bf16, tmp_path / "m.bin", "rwkvcpp"))  # rwkv.cpp has no bf16: fp32
    assert header.data_type_name == "FP32"


@pytest.mark.parametrize(
    ("to", "dst", "match"),
    [("onnx", ".", "is a folder; --to onnx writes one file"), ("pth", ".", "is a folder"),
     ("hf", "small.pth", "is a file; --to hf writes a folder"), ("hf", "small.pth/sub", "is not a directory"),
     ("safetensors", "/proc/no/such/place.safetensors", "does not exist")],
)  # fmt: skip
def test_a_destination_that_cannot_be_written_is_named(
    small_pth: Path, to: str, dst: str, match: str
) -> None:
    target = dst if dst.startswith("/") else str(small_pth.parent / dst)
    with pytest.raises(RwkvkitError, match=match):
        convert(small_pth, target, to)
    assert small_pth.is_file()
