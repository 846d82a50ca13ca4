"""The GPT baseline (rwkvkit/models/gpt.py): the parallel ``forward`` and the one-token ``step`` over
its KV cache agree (logits, cache, gradients), and bad caches are refused with a message."""

from __future__ import annotations

import pytest
import torch

from rwkvkit.errors import StateError
from rwkvkit.models.gpt import GPTConfig, GPTState
from rwkvkit.testing import assert_step_gradients_match_forward, assert_step_matches_forward, random_gpt

CONFIG = GPTConfig(vocab_size=61, n_layer=3, n_embd=48, n_head=4, ffn_dim=80, n_ctx=40)
# forward (one masked attention) vs step (one query per call): float32 in another order, measured
# <= 1e-6 on logits of size ~5.
STEP_TOL = 1e-5


def _tokens(*lengths: int, batch: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(0, CONFIG.vocab_size, (batch, n), generator=gen) for n in lengths]


def test_step_equals_forward_from_a_nonzero_state() -> None:
    """Token-by-token ``model.step`` == one ``model.forward`` over the sequence (logits and cache),
    continuing a 9-token cache; and that forward == one forward over prefix and sequence."""
    model = random_gpt(CONFIG, seed=7)
    assert_step_matches_forward(model, CONFIG.vocab_size, tol=STEP_TOL)
    prefix, tokens = _tokens(9, 21)
    with torch.no_grad():
        _, start = model(prefix)
        whole, whole_state = model.forward(tokens, start)
        from_scratch, _ = model(torch.cat([prefix, tokens], dim=1))
    assert start.length == 9 and whole_state.length == 30
    torch.testing.assert_close(whole, from_scratch[:, 9:], atol=STEP_TOL, rtol=STEP_TOL)


def test_step_gradients_equal_forward_gradients() -> None:
    assert_step_gradients_match_forward(random_gpt(CONFIG, seed=4), CONFIG.vocab_size, lambda s: s.key.sum())


def test_last_only_and_one_token_calls() -> None:
    model = random_gpt(CONFIG, seed=1)
    (tokens,) = _tokens(8)
    with torch.no_grad():
        full, state = model(tokens)
        last, last_state = model(tokens, last_only=True)
        one, _ = model(tokens[:, :1])  # T = 1 from the empty cache: the step path
    assert last.shape == (3, 1, CONFIG.vocab_size)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(last_state.key, state.key, atol=0, rtol=0)
    torch.testing.assert_close(one, full[:, :1], atol=STEP_TOL, rtol=STEP_TOL)


def test_bad_caches_are_refused() -> None:
    model = random_gpt(CONFIG, seed=1)
    with torch.no_grad():
        _, state = model(torch.zeros(2, 30, dtype=torch.long))
        before = state.clone()
        with pytest.raises(StateError, match="batch, heads"):
            model.step(torch.zeros(3, dtype=torch.long), state)
        with pytest.raises(StateError, match="40 positions"):
            model(torch.zeros(2, 11, dtype=torch.long), state)
        with pytest.raises(StateError, match="GPTState"):
            model.step(torch.zeros(2, dtype=torch.long), object())
        model(torch.zeros(2, 10, dtype=torch.long), state)  # fits exactly: 30 + 10
    assert isinstance(state, GPTState) and torch.equal(state.key, before.key)  # never mutated
