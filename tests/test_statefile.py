"""State files: round trip, model identity checks, bad files, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rwkvkit.errors import StateError
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.statefile import load_state, save_state
from rwkvkit.testing import random_rwkv4

CONFIG = RWKV4Config(vocab_size=60, n_layer=2, n_embd=24, ffn_dim=40)


@pytest.fixture(scope="module")
def model():
    return random_rwkv4(CONFIG, seed=1)


def test_round_trip(model, tmp_path: Path) -> None:
    logits, state = model(torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]))
    path = save_state(
        tmp_path / "s.state", state, model, tokens_consumed=4, logits=logits[:, -1], tokenizer="byte"
    )
    saved = load_state(path, model)
    for name, t in state.tensors().items():
        assert torch.equal(saved.state.tensors()[name], t), name
    assert torch.equal(saved.logits, logits[:, -1])
    assert saved.tokens_consumed == 4 and saved.tokenizer == "byte"
    assert saved.identity.version == "4" and saved.identity.config["n_embd"] == 24
    # the loaded state continues exactly like the original
    a, _ = model(torch.tensor([[9], [10]]), state)
    b, _ = model(torch.tensor([[9], [10]]), saved.state)
    assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["s.state"]  # no temporary file left behind


def test_same_weights_in_another_dtype_are_accepted(model, tmp_path: Path) -> None:
    _, state = model([1, 2, 3])
    save_state(tmp_path / "s.state", state, model, tokens_consumed=3)
    for dtype in (torch.float16, torch.bfloat16):
        other = random_rwkv4(CONFIG, seed=1).to(dtype)
        assert load_state(tmp_path / "s.state", other).tokens_consumed == 3


def test_another_model_is_refused(model, tmp_path: Path) -> None:
    _, state = model([1, 2, 3])
    path = save_state(tmp_path / "s.state", state, model, tokens_consumed=3)
    with pytest.raises(StateError, match="same shape but different weights"):
        load_state(path, random_rwkv4(CONFIG, seed=2))
    wider = random_rwkv4(RWKV4Config(vocab_size=60, n_layer=2, n_embd=32, ffn_dim=40), seed=1)
    with pytest.raises(StateError, match="another shape"):
        load_state(path, wider)


def test_bad_files_are_refused_clearly(model, tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no such state file"):
        load_state(tmp_path / "missing.state", model)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    with pytest.raises(StateError, match="not an rwkvkit state file"):
        load_state(weights, model)
    _, state = model([1])
    good = save_state(tmp_path / "s.state", state, model, tokens_consumed=1)
    truncated = tmp_path / "t.state"
    truncated.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(StateError, match="truncated or corrupt"):
        load_state(truncated, model)
    garbage = tmp_path / "g.state"
    garbage.write_bytes(b"hello, I am not a state")
    with pytest.raises(StateError, match="truncated or corrupt"):
        load_state(garbage, model)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_states_are_refused(tmp_path: Path, value: float) -> None:
    model = random_rwkv4(RWKV4Config(vocab_size=64, n_layer=1, n_embd=16, ffn_dim=32))
    _, state = model([1, 2])
    state.wkv_num[0, 0, 3] = value
    path = save_state(tmp_path / "s.state", state, model, tokens_consumed=2)
    with pytest.raises(StateError, match="NaN" if value != value else "infinite"):
        load_state(path, model)
