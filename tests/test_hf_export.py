"""``convert --to hf`` for every version: transformers' RwkvForCausalLM (RWKV-4, also checked in
transformers itself in test_rwkv4.py), the RWKV/ remote-code layout (RWKV-5, RWKV-6) and
flash-linear-attention's RWKV7ForCausalLM (RWKV-7). Each folder reloads in rwkvkit with the same
logits, holds the names the public code of those layouts uses (test_hf.py, test_fla.py list them)
and the tokenizer files. That llama.cpp's converter accepts the RWKV-6/7 folders is shown in
test_gguf.py, whose llama.cpp conversions are made from exactly these folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_fla import FLA_NAMES
from test_hf import HF_V5_NAMES, HF_V6_NAMES

import rwkvkit
from rwkvkit.chat import ChatTemplate
from rwkvkit.convert import WORLD_VOCAB_FILE, convert
from rwkvkit.errors import CheckpointError
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.testing import (
    random_rwkv4_state_dict,
    random_rwkv5_state_dict,
    random_rwkv6_state_dict,
    random_rwkv7_state_dict,
)
from rwkvkit.tokenizer import WORLD_VOCAB_PATH, load_tokenizer

V = 65536  # the World vocabulary's rows: the folders carry its tokenizer files
CASES = {
    "4": (RWKV4Config(vocab_size=V, n_layer=2, n_embd=32, ffn_dim=64), random_rwkv4_state_dict, "rwkv"),
    "5.0": (RWKV5Config(vocab_size=V, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, gate=False,
                        per_channel_decay=False, log_bonus=True), random_rwkv5_state_dict, "rwkv5"),
    "5.1": (RWKV5Config(vocab_size=V, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, per_channel_decay=False,
                        log_bonus=True), random_rwkv5_state_dict, "rwkv5"),
    "5.2": (RWKV5Config(vocab_size=V, n_layer=2, n_embd=32, ffn_dim=64, head_size=8), random_rwkv5_state_dict,
            "rwkv5"),
    "6": (RWKV6Config(vocab_size=V, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, mix_lora=4, decay_lora=6),
          random_rwkv6_state_dict, "rwkv6"),
    "7": (RWKV7Config(vocab_size=V, n_layer=2, n_embd=64, ffn_dim=64, head_size=64, decay_lora=4, iclr_lora=4,
                      value_lora=4, gate_lora=8), random_rwkv7_state_dict, "rwkv7"),
}  # fmt: skip
TOKENS = [5, 300, 9, 65000, 2, 17]


def logits(path: Path) -> torch.Tensor:
    with torch.no_grad():
        return rwkvkit.load_model(path)(TOKENS)[0]


@pytest.mark.parametrize("name", list(CASES))
def test_every_version_round_trips_through_a_folder(tmp_path: Path, name: str) -> None:
    config, make, model_type = CASES[name]
    torch.save(make(config, seed=8), tmp_path / "src.pth")
    folder = convert(tmp_path / "src.pth", tmp_path / "hf", "hf")
    assert torch.equal(logits(folder), logits(tmp_path / "src.pth"))
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == model_type and cfg["num_hidden_layers"] == config.n_layer
    assert cfg["vocab_size"] == V and cfg["hidden_size"] == config.n_embd
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    if name == "4":
        assert cfg["architectures"] == ["RwkvForCausalLM"]
        return
    expected = {"rwkv5": HF_V5_NAMES if name == "5.2" else set(), "rwkv6": HF_V6_NAMES, "rwkv7": FLA_NAMES}
    assert expected[model_type] <= names, expected[model_type] - names
    vocab = folder / WORLD_VOCAB_FILE
    assert load_tokenizer(vocab).vocab == load_tokenizer(WORLD_VOCAB_PATH).vocab
    assert (
        json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == ChatTemplate().jinja()
    )
    if model_type == "rwkv7":
        assert cfg["architectures"] == ["RWKV7ForCausalLM"]
        assert (cfg["head_dim"], cfg["norm_eps"], cfg["decay_low_rank_dim"], cfg["a_low_rank_dim"],
                cfg["v_low_rank_dim"], cfg["gate_low_rank_dim"]) == (64, 1e-5, 4, 4, 4, 8)  # fmt: skip
    else:
        repo = {"rwkv5": "RWKV/rwkv-5-world-1b5", "rwkv6": "RWKV/v6-Finch-1B6-HF"}[model_type]
        assert cfg["auto_map"]["AutoModelForCausalLM"].startswith(f"{repo}--modeling_{model_type}.")
        assert (cfg["head_size"], cfg["head_size_divisor"], cfg["rescale_every"]) == (8, 8, 0)
        assert cfg["intermediate_size"] == config.ffn_dim and cfg["layer_norm_epsilon"] == 1e-5


def test_rwkv_cpp_v5_eps_is_recorded_as_head_size_divisor(tmp_path: Path) -> None:
    """rwkv.cpp runs RWKV-5's ln_x with eps 1e-5: the remote-code config says so with
    head_size_divisor 1 (eps = 1e-5 * divisor**2), and the folder reloads with it."""
    config, make, _ = CASES["5.2"]
    torch.save(make(config, seed=2), tmp_path / "src.pth")
    with pytest.warns(UserWarning, match="eps"):
        cpp = convert(tmp_path / "src.pth", tmp_path / "m.bin", "rwkvcpp")
    folder = convert(cpp, tmp_path / "hf", "hf")
    assert json.loads((folder / "config.json").read_text())["head_size_divisor"] == 1
    assert rwkvkit.load_model(folder).config.ln_x_eps == pytest.approx(1e-5)
    assert torch.equal(logits(folder), logits(cpp))


def test_an_ln_x_eps_fla_cannot_record_is_warned(tmp_path: Path) -> None:
    """BlinkDL's RWKV-7 runs ln_x with eps 64e-5 at any head size; fla with head_dim * norm_eps, which
    is that only at head size 64."""
    config = RWKV7Config(vocab_size=V, n_layer=1, n_embd=32, ffn_dim=64, head_size=8, decay_lora=4, iclr_lora=4,
                         value_lora=4, gate_lora=8)  # fmt: skip
    torch.save(random_rwkv7_state_dict(config), tmp_path / "src.pth")
    with pytest.warns(UserWarning, match=r"head_dim \* norm_eps"):
        convert(tmp_path / "src.pth", tmp_path / "hf", "hf")


def test_a_byte_level_model_goes_without_tokenizer_files(tmp_path: Path, small_pth: Path) -> None:
    folder = convert(small_pth, tmp_path / "hf", "hf")
    assert not (folder / WORLD_VOCAB_FILE).exists() and (folder / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("name", "patch", "match"),
    [("5.2", {"layer_norm_epsilon": "abc"}, "'layer_norm_epsilon' is 'abc'"),
     ("6", {"layer_norm_epsilon": float("nan")}, "'layer_norm_epsilon' is nan"),
     ("6", {"layer_norm_epsilon": -1}, "'layer_norm_epsilon' is -1, not a number between 0 and 1"),
     ("6", {"head_size_divisor": 1e200}, "'head_size_divisor' is 1e\\+200"),
     ("5.2", {"head_size_divisor": "8"}, "'head_size_divisor' is '8'"),
     ("7", {"norm_eps": [1e-5]}, "'norm_eps' is \\[1e-05\\]"),
     ("7", {"head_dim": 0}, "'head_dim' is 0")],
)  # fmt: skip
def test_a_config_value_that_cannot_be_is_named(tmp_path: Path, name: str, patch: dict, match: str) -> None:
    """A folder's config.json with text, NaN, a list or an absurd size where a number belongs: one
    CheckpointError naming the file and the key, before the weights are read."""
    config, make, _ = CASES[name]
    torch.save(make(config, seed=3), tmp_path / "m.pth")
    folder = convert(tmp_path / "m.pth", tmp_path / "hf", "hf")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **patch}))
    with pytest.raises(CheckpointError, match=rf"config\.json: {match}"):
        rwkvkit.load_model(folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config\.json: not a JSON object"):
        rwkvkit.load_model(folder)
