"""The text sample a training run writes to samples.txt at each evaluation."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..generate import generate_text


def sample_text(model: nn.Module, tokenizer: Any, prompt: str, n: int, seed: int) -> str:
    """A sample from the model (temperature 1, top-p 0.9), through the engine with its own seeded
    generator: the training RNG is untouched, so sampling never changes what the run computes.
    A fixed-context model (the GPT baseline) stops at its window."""
    was_training = model.training
    model.eval()
    ids = tokenizer.encode(prompt) or [0]
    try:
        result = generate_text(model, tokenizer, ids, seed=seed, top_p=0.9, max_tokens=n, stop_token_ids=[])
    finally:
        model.train(was_training)
    return prompt + result.text
