"""RWKV-4 model (rwkvkit/models/rwkv4.py): the parallel ``forward`` and the one-token ``step`` agree
(logits, state, gradients), and the logits agree with the official ``rwkv`` package and with
transformers' ``RwkvForCausalLM`` on the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rwkvkit
from rwkvkit.convert import convert
from rwkvkit.errors import StateError
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.testing import (
    assert_calls_agree,
    assert_step_gradients_match_forward,
    assert_step_matches_forward,
    random_rwkv4,
    random_rwkv4_state_dict,
)

# Same float32 math in a different order: measured differences are ~1e-6 on logits of size ~5.
PEER_TOL = 1e-4
MODE_TOL = 2e-5
# forward vs step from the same state: measured <= 3e-6 on logits and states.
STEP_TOL = 1e-5

SHAPES = [
    RWKV4Config(vocab_size=97, n_layer=3, n_embd=40, ffn_dim=72, chunk_len=8),
    RWKV4Config(vocab_size=50, n_layer=2, n_embd=33, ffn_dim=33 * 4, chunk_len=5),  # odd width
    RWKV4Config(vocab_size=256, n_layer=1, n_embd=16, ffn_dim=7, chunk_len=32),  # tiny FFN
]


@pytest.mark.parametrize("config", SHAPES)
def test_parallel_recurrent_and_split_agree(config: RWKV4Config) -> None:
    tokens = torch.randint(0, config.vocab_size, (3, 29), generator=torch.Generator().manual_seed(0))
    assert_calls_agree(random_rwkv4(config, seed=1), tokens, split=12, tol=MODE_TOL)


@pytest.mark.parametrize("config", SHAPES)
def test_step_equals_forward_from_a_nonzero_state(config: RWKV4Config) -> None:
    """Token-by-token ``model.step`` == one ``model.forward`` over the sequence, logits and state."""
    assert_step_matches_forward(random_rwkv4(config, seed=7), config.vocab_size, tol=STEP_TOL)


def test_batch_rows_are_independent() -> None:
    model = random_rwkv4(SHAPES[0], seed=2)
    tokens = torch.randint(0, 97, (4, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched, _ = model(tokens)
        single, _ = model(tokens[2])
    torch.testing.assert_close(batched[2:3], single, atol=MODE_TOL, rtol=MODE_TOL)


def test_call_never_mutates_the_given_state_and_clone_is_independent() -> None:
    model = random_rwkv4(SHAPES[0], seed=2)
    with torch.no_grad():
        _, state = model([1, 2, 3])
        before = state.clone()
        model([4, 5], state)
        model([6], state)
    for name, t in before.tensors().items():
        assert torch.equal(t, state.tensors()[name]), name
        assert t.data_ptr() != state.tensors()[name].data_ptr()


def test_inputs_accept_lists_and_reject_bad_shapes_and_states() -> None:
    model = random_rwkv4(SHAPES[0], seed=2)
    with torch.no_grad():
        a, _ = model([1, 2, 3])
        b, _ = model(torch.tensor([1, 2, 3]))
        assert torch.equal(a, b) and a.shape == (1, 3, 97)
        with pytest.raises(ValueError, match="T >= 1"):
            model(torch.zeros(1, 0, dtype=torch.long))
        _, state = model([1, 2])
        with pytest.raises(StateError, match=r"needs \(3, 2, 40\)"):
            model(torch.zeros(2, 3, dtype=torch.long), state)
        with pytest.raises(StateError, match=r"needs \(3, 2, 40\)"):
            model.step(torch.zeros(2, dtype=torch.long), state)
        with pytest.raises(ValueError, match=r"shape \(B,\)"):
            model.step(torch.zeros(1, 1, dtype=torch.long), state)
        other = random_rwkv4(SHAPES[1], seed=0)
        with pytest.raises(StateError):
            other([1], state)


def test_step_gradients_equal_forward_gradients() -> None:
    """Training through either mode gives the same gradient for every parameter, and all are finite."""
    assert_step_gradients_match_forward(
        random_rwkv4(SHAPES[0], seed=4),
        SHAPES[0].vocab_size,
        # the WKV sums themselves (num e^max): the forms may carry different maxima
        lambda s: (
            s.att_x_prev.sum() + (s.wkv_num * s.wkv_max.exp()).sum() + (s.wkv_den * s.wkv_max.exp()).sum()
        ),
    )


def _official(path: Path):
    from rwkv.model import RWKV  # environment switches are set in conftest.py

    return RWKV(model=str(path), strategy="cpu fp32", verbose=False)


@pytest.mark.parametrize("config", SHAPES[:2])
def test_logits_equal_official_rwkv_package(tmp_path: Path, config: RWKV4Config) -> None:
    pytest.importorskip("rwkv")
    path = tmp_path / "model.pth"
    torch.save(random_rwkv4_state_dict(config, seed=5), path)
    official = _official(path)
    ours = rwkvkit.load_model(path)
    tokens = torch.randint(0, config.vocab_size, (19,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.no_grad():
        ref_seq, ref_state = official.forward(tokens[:15], None, full_output=True)
        ref_next, _ = official.forward(tokens[15:], ref_state, full_output=True)
        seq, state = ours(tokens[:15])
        nxt, _ = ours(tokens[15:], state)
    assert (seq[0] - ref_seq).abs().max() <= PEER_TOL
    assert (nxt[0] - ref_next).abs().max() <= PEER_TOL


def test_hf_roundtrip_both_directions(tmp_path: Path, small_pth: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokens = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(3))
    # ours -> transformers
    convert(small_pth, tmp_path / "hf", "hf")
    hf_model = transformers.RwkvForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = rwkvkit.load_model(small_pth)
    with torch.no_grad():
        ref = hf_model(tokens).logits
        got, _ = ours(tokens)
    assert (got - ref).abs().max() <= PEER_TOL
    # transformers -> ours: a model transformers made and saved itself
    cfg = transformers.RwkvConfig(
        vocab_size=61,
        hidden_size=24,
        num_hidden_layers=2,
        attention_hidden_size=24,
        intermediate_size=40,
        context_length=64,
    )
    torch.manual_seed(0)
    theirs = transformers.RwkvForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.5)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = rwkvkit.load_model(tmp_path / "theirs")
    theirs.config.rescale_every = (
        0  # compare against its unscaled arithmetic (the saved weights are unscaled)
    )
    with torch.no_grad():
        ref = theirs(tokens % 61).logits
        got, _ = loaded(tokens % 61)
    assert (got - ref).abs().max() <= PEER_TOL
