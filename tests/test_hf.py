"""Hugging Face folders of the newer versions load through ``rwkvkit.load_model``: the RWKV/
remote-code RWKV-5/6 folders (model_type rwkv5/rwkv6). Their modeling code is not installable here,
so the folders are written with the key names and layouts that code uses (listed below, not derived
from our map). flash-linear-attention's RWKV-7 folders: test_fla.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import rwkvkit
from rwkvkit.formats import hf
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.testing import random_rwkv5_state_dict, random_rwkv6_state_dict

TOKENS = [5, 3, 9, 1, 2]

# Names from the public modeling code (RWKV/rwkv-5-world-*: modeling_rwkv5.py).
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


def _reference_logits(sd: dict[str, torch.Tensor], tmp_path: Path) -> torch.Tensor:
    torch.save(sd, tmp_path / "ref.pth")
    with torch.no_grad():
        return rwkvkit.load_model(tmp_path / "ref.pth")(TOKENS)[0]


def write_folder(folder: Path, sd: dict[str, torch.Tensor], config: dict) -> Path:
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
    folder = write_folder(tmp_path / "hf", hf_sd, {"model_type": model_type, "layer_norm_epsilon": 1e-5})
    with torch.no_grad():
        got = rwkvkit.load_model(folder)(TOKENS)[0]
    assert torch.equal(got, _reference_logits(sd, tmp_path))
