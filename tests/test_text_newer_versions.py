"""Generation and state files, built for RWKV-4, work unchanged for RWKV-5, 6 and 7."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rwkvkit
from rwkvkit.errors import StateError
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.statefile import load_state, save_state
from rwkvkit.testing import random_rwkv5, random_rwkv6, random_rwkv7
from rwkvkit.tokenizer import load_tokenizer

MODELS = {
    "5": lambda seed: random_rwkv5(
        RWKV5Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=64, head_size=16), seed
    ),
    "6": lambda seed: random_rwkv6(
        RWKV6Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=64, head_size=16), seed
    ),
    "7": lambda seed: random_rwkv7(
        RWKV7Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=64, head_size=16), seed
    ),
}


@pytest.mark.parametrize("version", sorted(MODELS))
def test_generate_and_state_files(version: str, tmp_path: Path) -> None:
    model, tok = MODELS[version](0), load_tokenizer("byte")
    prompt = "ROMEO: speak"
    whole = rwkvkit.generate_text(model, tok, prompt + " again", max_tokens=12, temperature=0)
    # The same greedy text from a saved-and-restored state after the first part of the prompt.
    first = rwkvkit.generate_text(model, tok, prompt, max_tokens=0, keep_state=True)
    path = save_state(
        tmp_path / "s.safetensors", first.state, model, tokens_consumed=len(prompt), logits=first.logits
    )
    saved = load_state(path, model)
    assert saved.tokens_consumed == len(prompt)
    with torch.no_grad():
        logits, state = model(tok.encode(" again"), saved.state)
    token_ids = []
    for _ in range(12):  # greedy by hand from the restored state
        nxt = int(logits[0, -1].argmax())
        token_ids.append(nxt)
        with torch.no_grad():
            logits, state = model([nxt], state)
    assert token_ids == whole.token_ids
    with pytest.raises(StateError):
        load_state(path, MODELS[version](1))  # same shapes, other weights
