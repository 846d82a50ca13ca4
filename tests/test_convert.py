"""``rwkvkit convert`` for RWKV-5/6/7: pth, safetensors and rwkv.cpp outputs load back to the same
logits (the rwkv.cpp FP32 form stores decays transformed, so it agrees to float32 rounding)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rwkvkit
from rwkvkit.convert import convert
from rwkvkit.errors import RwkvkitError
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.testing import random_rwkv5_state_dict, random_rwkv6_state_dict, random_rwkv7_state_dict

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]
TOKENS = [3, 1, 4, 1, 5, 9, 2, 6]
CASES = {
    "5.2": (RWKV5Config(vocab_size=60, n_layer=2, n_embd=32, ffn_dim=64, head_size=8), random_rwkv5_state_dict),
    "6": (RWKV6Config(vocab_size=60, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, mix_lora=4, decay_lora=6),
          random_rwkv6_state_dict),
    "7": (RWKV7Config(vocab_size=60, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, decay_lora=4, iclr_lora=4,
                      value_lora=4, gate_lora=8), random_rwkv7_state_dict),
}  # fmt: skip


def _logits(path: Path) -> torch.Tensor:
    with torch.no_grad():
        return rwkvkit.load_model(path)(TOKENS)[0]


@pytest.mark.parametrize("version", list(CASES))
def test_convert_round_trips(tmp_path: Path, version: str) -> None:
    config, make = CASES[version]
    src = tmp_path / "src.pth"
    torch.save(make(config, seed=2), src)
    want = _logits(src)
    st = convert(src, tmp_path / "m.safetensors", "safetensors")
    assert torch.equal(_logits(st), want)
    back = convert(st, tmp_path / "back.pth", "pth")
    assert torch.equal(_logits(back), want)
    if version == "5.2":
        with pytest.warns(UserWarning, match="eps"):  # rwkv.cpp's v5 eps differs from BlinkDL's
            convert(src, tmp_path / "m.bin", "rwkvcpp")
        return
    cpp = convert(src, tmp_path / "m.bin", "rwkvcpp")
    torch.testing.assert_close(_logits(cpp), want, atol=2e-5, rtol=2e-5)


def test_rwkvcpp_v5_eps_survives_safetensors_and_warns_for_pth(tmp_path: Path) -> None:
    config, make = CASES["5.2"]
    torch.save(make(config, seed=3), tmp_path / "src.pth")
    with pytest.warns(UserWarning):
        cpp = convert(tmp_path / "src.pth", tmp_path / "m.bin", "rwkvcpp")
    st = convert(cpp, tmp_path / "m.safetensors", "safetensors")
    assert rwkvkit.load_model(st).config.ln_x_eps == 1e-5
    torch.testing.assert_close(_logits(st), _logits(cpp), atol=0, rtol=0)
    with pytest.warns(UserWarning, match="cannot record"):
        convert(cpp, tmp_path / "m.pth", "pth")


def test_v5_1_has_no_rwkvcpp_form(tmp_path: Path) -> None:
    config = RWKV5Config(vocab_size=60, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, per_channel_decay=False,
                         log_bonus=True)  # fmt: skip
    torch.save(random_rwkv5_state_dict(config), tmp_path / "v51.pth")
    with pytest.raises(RwkvkitError, match=r"RWKV-5\.1"):
        convert(tmp_path / "v51.pth", tmp_path / "x.bin", "rwkvcpp")


def test_cli_converts_v7(tmp_path: Path) -> None:
    config, make = CASES["7"]
    torch.save(make(config, seed=4), tmp_path / "src.pth")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rwkvkit", "convert", str(tmp_path / "src.pth"), str(tmp_path / "o.safetensors"),
         "--to", "safetensors", "--dtype", "bf16"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    model = rwkvkit.load_model(tmp_path / "o.safetensors", dtype=torch.bfloat16)
    assert model.config.version == "7"
    with torch.no_grad():
        got = model(TOKENS)[0]
    # bf16 weights: 8 bits of mantissa, logits ~5 -> differences of a few 1e-2 are rounding.
    torch.testing.assert_close(got, _logits(tmp_path / "src.pth"), atol=0.25, rtol=0.05)
