"""What every model checks at its edge: the layer count of a state dict (indices contiguous from 0,
checked before anything is built), config values (types and ranges), and token ids."""

from __future__ import annotations

import math

import pytest
import torch

import rwkvkit
from rwkvkit.defaults import DEFAULT_MODEL
from rwkvkit.errors import ConfigError, InputError, RwkvkitError
from rwkvkit.models import RWKV4Config, RWKV5Config, RWKV7Config
from rwkvkit.models.common import count_layers
from rwkvkit.models.gpt import GPTConfig
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.testing import random_gpt, random_rwkv4, random_rwkv5, random_rwkv6, random_rwkv7


def test_count_layers() -> None:
    assert count_layers(["emb.weight", "blocks.0.a", "blocks.1.b", "blocks.1.c"]) == 2
    with pytest.raises(ConfigError, match=r"blocks\.1 is missing and there is a blocks\.99999999"):
        count_layers(["blocks.0.a", "blocks.99999999.ln1.weight"])
    with pytest.raises(ConfigError, match=r"blocks\.0 is missing"):
        count_layers(["blocks.1.a", "blocks.2.a"])
    with pytest.raises(ConfigError, match="holds no layers"):
        count_layers(["emb.weight"])
    with pytest.raises(ConfigError, match="is not a number"):
        count_layers(["blocks.x.a"])


@pytest.mark.parametrize("eps", [0.0, -1e-5, math.nan, math.inf, 1e300, "abc", None])
def test_config_epsilon_must_be_finite_and_small(eps: object) -> None:
    with pytest.raises(ConfigError, match="layer_norm_eps"):
        RWKV4Config(256, 2, 32, 64, layer_norm_eps=eps)  # type: ignore[arg-type]


def test_config_sizes_and_types() -> None:
    with pytest.raises(ConfigError, match="n_embd must be an integer >= 1, got 0"):
        RWKV4Config(256, 2, 0, 64)
    with pytest.raises(ConfigError, match="gate must be true or false"):
        RWKV5Config(256, 2, 64, 64, head_size=32, gate="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a multiple of head_size"):
        RWKV7Config(256, 2, 64, 64, head_size=48)
    with pytest.raises(ConfigError, match="n_embd=32 is not a multiple of n_head=3"):
        GPTConfig(256, 1, 32, 3, 64, 16)
    assert RWKV4Config(256, 2.0, 32, 64).n_layer == 2  # type: ignore[arg-type]  # JSON may give 2.0
    assert RWKV5Config(256, 2, 64, 64, head_size=32, dim_att=0).att_width == 64  # 0: derive it


MODELS = {
    "4": lambda: random_rwkv4(RWKV4Config(97, 2, 32, 64)),
    "5": lambda: random_rwkv5(RWKV5Config(97, 2, 64, 64, head_size=32)),
    "6": lambda: random_rwkv6(RWKV6Config(97, 2, 64, 64, head_size=32, mix_lora=8, decay_lora=8)),
    "7": lambda: random_rwkv7(
        RWKV7Config(97, 2, 64, 64, head_size=32, decay_lora=8, iclr_lora=8, value_lora=8, gate_lora=8)
    ),
    "gpt": lambda: random_gpt(GPTConfig(97, 2, 32, 2, 64, 16)),
}


@pytest.mark.parametrize("version", list(MODELS))
def test_token_ids_are_checked_in_forward_and_step(version: str) -> None:
    model = MODELS[version]()
    with torch.no_grad():
        for bad in ([1, 97, 2], [[-1, 3]], [5]):
            with pytest.raises(InputError, match="outside this model's vocabulary"):
                model(bad if bad != [5] else [97])
        with pytest.raises(InputError, match="outside this model's vocabulary"):
            model.step(torch.tensor([3, 200]))
        with pytest.raises(InputError, match="integers"):
            model(torch.tensor([[1.5, 2.0]]))
        logits, _ = model([1, 96])
        assert logits.shape == (1, 2, 97)


def test_load_model_is_ready_for_inference() -> None:
    model = rwkvkit.load_model(DEFAULT_MODEL)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    logits, state = model([82, 79, 77])
    assert not logits.requires_grad and logits.numpy().shape == (1, 3, 256)
    with pytest.raises(RwkvkitError, match="token id 300 is outside this model's vocabulary"):
        model([300])
    # Training a loaded model is one call away, as documented.
    model.train().requires_grad_(True)
    loss = model([82, 79, 77])[0].logsumexp(-1).mean()
    loss.backward()
    assert model.emb.weight.grad is not None and model.emb.weight.grad.abs().sum() > 0
