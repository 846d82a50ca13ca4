"""Hugging Face folders of the newer versions load through ``rwkvkit.load_model``: the RWKV/
remote-code RWKV-5/6 folders (model_type rwkv5/rwkv6) and flash-linear-attention's RWKV7ForCausalLM
(model_type rwkv7). Their modeling code is not installable here, so the folders are written with the
key names and layouts those projects' public code uses (listed below, not derived from our map)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import rwkvkit
from rwkvkit.errors import CheckpointError
from rwkvkit.formats import fla, hf
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.testing import random_rwkv5_state_dict, random_rwkv6_state_dict, random_rwkv7_state_dict

pytestmark = pytest.mark.usefixtures("single_thread")

TOKENS = [5, 3, 9, 1, 2]

# Names from the public modeling code (RWKV/rwkv-5-world-*: modeling_rwkv5.py; fla: models/rwkv7).
HF_V5_NAMES = {
    "rwkv.embeddings.weight",
    "rwkv.blocks.0.pre_ln.weight",
    "rwkv.blocks.1.ln1.bias",
    "rwkv.blocks.0.attention.time_mix_gate",
    "rwkv.blocks.0.attention.time_mix_key",
    "rwkv.blocks.0.attention.time_decay",
    "rwkv.blocks.0.attention.time_faaaa",
    "rwkv.blocks.0.attention.gate.weight",
    "rwkv.blocks.0.attention.ln_x.weight",
    "rwkv.blocks.0.feed_forward.time_mix_receptance",
    "rwkv.blocks.0.feed_forward.value.weight",
    "rwkv.ln_out.weight",
    "head.weight",
}
HF_V6_NAMES = {
    "rwkv.blocks.0.attention.time_maa_x",
    "rwkv.blocks.0.attention.time_maa_w1",
    "rwkv.blocks.0.attention.time_decay_w2",
    "rwkv.blocks.0.attention.time_faaaa",
    "rwkv.blocks.0.feed_forward.time_maa_k",
}
FLA_NAMES = {
    "model.embeddings.weight", "model.layers.0.pre_norm.weight", "model.layers.0.attn_norm.bias",
    "model.layers.0.ffn_norm.weight", "model.layers.0.attn.x_r", "model.layers.0.attn.k_k",
    "model.layers.0.attn.r_k", "model.layers.0.attn.r_proj.weight", "model.layers.0.attn.o_proj.weight",
    "model.layers.0.attn.g_norm.bias", "model.layers.0.attn.w_lora.lora.0.weight",
    "model.layers.0.attn.w_lora.lora.2.weight", "model.layers.0.attn.w_lora.lora.2.bias",
    "model.layers.1.attn.v_lora.lora.2.bias", "model.layers.0.attn.g_lora.lora.2.weight",
    "model.layers.0.ffn.x_k", "model.layers.0.ffn.key.weight", "model.norm.weight", "lm_head.weight",
}  # fmt: skip


def _reference_logits(sd: dict[str, torch.Tensor], tmp_path: Path) -> torch.Tensor:
    torch.save(sd, tmp_path / "ref.pth")
    with torch.no_grad():
        return rwkvkit.load_model(tmp_path / "ref.pth")(TOKENS)[0]


def _write_folder(folder: Path, sd: dict[str, torch.Tensor], config: dict) -> Path:
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("version", ["5.2", "6"])
def test_remote_code_v5_v6_folders_load(tmp_path: Path, version: str) -> None:
    if version == "5.2":
        sd = random_rwkv5_state_dict(
            RWKV5Config(vocab_size=50, n_layer=2, n_embd=32, ffn_dim=64, head_size=8)
        )
        names, model_type = HF_V5_NAMES, "rwkv5"
    else:
        config = RWKV6Config(
            vocab_size=50, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, mix_lora=4, decay_lora=4
        )
        sd, names, model_type = random_rwkv6_state_dict(config), HF_V6_NAMES, "rwkv6"
    hf_sd = hf.blinkdl_to_hf(sd)
    assert names <= set(hf_sd), names - set(hf_sd)
    folder = _write_folder(tmp_path / "hf", hf_sd, {"model_type": model_type, "layer_norm_epsilon": 1e-5})
    with torch.no_grad():
        got = rwkvkit.load_model(folder)(TOKENS)[0]
    assert torch.equal(got, _reference_logits(sd, tmp_path))


def test_fla_rwkv7_folder_loads(tmp_path: Path) -> None:
    config = RWKV7Config(vocab_size=50, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, decay_lora=4, iclr_lora=6,
                         value_lora=4, gate_lora=8)  # fmt: skip
    sd = random_rwkv7_state_dict(config, seed=1)
    fla_sd = fla.blinkdl_to_fla(sd)
    assert set(fla_sd) >= FLA_NAMES, FLA_NAMES - set(fla_sd)
    assert not any(k.startswith("model.layers.0.attn.v_lora") for k in fla_sd)  # fla has none in layer 0
    assert fla_sd["model.layers.0.attn.w_lora.lora.0.weight"].shape == (4, 32)  # nn.Linear(C, D)
    assert fla_sd["model.layers.0.attn.w_lora.lora.2.bias"].shape == (32,)
    folder = _write_folder(
        tmp_path / "fla", fla_sd, {"model_type": "rwkv7", "architectures": ["RWKV7ForCausalLM"], "norm_eps": 1e-5,
                                   "head_dim": 8}
    )  # fmt: skip
    model = rwkvkit.load_model(folder)
    assert model.config.ln_x_eps == pytest.approx(8e-5)  # fla: head_dim * norm_eps
    sd_same_eps = dict(sd)
    torch.save(sd_same_eps, tmp_path / "ref.pth")
    raw = rwkvkit.checkpoint.read_checkpoint(tmp_path / "ref.pth")
    raw.config_overrides = {"ln_x_eps": 8e-5}
    ref = rwkvkit.checkpoint.build_model(raw)
    with torch.no_grad():
        # Layer 0's unused v0/v1/v2 are absent from the fla folder: the logits cannot tell.
        assert torch.equal(model(TOKENS)[0], ref(TOKENS)[0])


def test_unknown_fla_key_is_named(tmp_path: Path) -> None:
    folder = _write_folder(
        tmp_path / "bad", {"model.layers.0.attn.q_proj.weight": torch.zeros(2, 2)}, {"model_type": "rwkv7"}
    )
    with pytest.raises(CheckpointError, match="q_proj"):
        rwkvkit.load_model(folder)
