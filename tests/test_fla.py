"""flash-linear-attention's RWKV7ForCausalLM folders (model_type rwkv7) load through
``rwkvkit.load_model``. fla is not installable here, so the folders are written with the key names
and layouts fla's public code (models/rwkv7) uses, listed below, not derived from our map."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_hf import TOKENS, write_folder

import rwkvkit
from rwkvkit.errors import CheckpointError
from rwkvkit.formats import fla
from rwkvkit.inference import optimize_for_inference
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.testing import random_rwkv7_state_dict

FLA_NAMES = {
    "model.embeddings.weight", "model.layers.0.pre_norm.weight", "model.layers.0.attn_norm.bias",
    "model.layers.0.ffn_norm.weight", "model.layers.0.attn.x_r", "model.layers.0.attn.k_k",
    "model.layers.0.attn.r_k", "model.layers.0.attn.r_proj.weight", "model.layers.0.attn.o_proj.weight",
    "model.layers.0.attn.g_norm.bias", "model.layers.0.attn.w_lora.lora.0.weight",
    "model.layers.0.attn.w_lora.lora.2.weight", "model.layers.0.attn.w_lora.lora.2.bias",
    "model.layers.1.attn.v_lora.lora.2.bias", "model.layers.0.attn.g_lora.lora.2.weight",
    "model.layers.0.ffn.x_k", "model.layers.0.ffn.key.weight", "model.norm.weight", "lm_head.weight",
}  # fmt: skip


def test_fla_rwkv7_folder_loads(tmp_path: Path) -> None:
    config = RWKV7Config(vocab_size=50, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, decay_lora=4, iclr_lora=6,
                         value_lora=4, gate_lora=8)  # fmt: skip
    sd = random_rwkv7_state_dict(config, seed=1)
    fla_sd = fla.blinkdl_to_fla(sd)
    assert set(fla_sd) >= FLA_NAMES, FLA_NAMES - set(fla_sd)
    assert not any(k.startswith("model.layers.0.attn.v_lora") for k in fla_sd)  # fla has none in layer 0
    assert fla_sd["model.layers.0.attn.w_lora.lora.0.weight"].shape == (4, 32)  # nn.Linear(C, D)
    assert fla_sd["model.layers.0.attn.w_lora.lora.2.bias"].shape == (32,)
    folder = write_folder(
        tmp_path / "fla", fla_sd, {"model_type": "rwkv7", "architectures": ["RWKV7ForCausalLM"], "norm_eps": 1e-5,
                                   "head_dim": 8}
    )  # fmt: skip
    model = rwkvkit.load_model(folder)
    assert model.config.ln_x_eps == pytest.approx(8e-5)  # fla: head_dim * norm_eps
    sd_same_eps = dict(sd)
    torch.save(sd_same_eps, tmp_path / "ref.pth")
    raw = rwkvkit.checkpoint.read_checkpoint(tmp_path / "ref.pth")
    raw.config_overrides = {"ln_x_eps": 8e-5}
    # the same fast layers as load_model's (rwkvkit.inference), so the two must agree to the bit
    ref = optimize_for_inference(rwkvkit.checkpoint.build_model(raw))
    with torch.no_grad():
        # Layer 0's unused v0/v1/v2 are absent from the fla folder: the logits cannot tell.
        assert torch.equal(model(TOKENS)[0], ref(TOKENS)[0])


def test_unknown_fla_key_is_named(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path / "bad", {"model.layers.0.attn.q_proj.weight": torch.zeros(2, 2)}, {"model_type": "rwkv7"}
    )
    with pytest.raises(CheckpointError, match="q_proj"):
        rwkvkit.load_model(folder)
