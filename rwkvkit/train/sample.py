"""The text sample a training run writes to samples.txt at each evaluation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


@torch.no_grad()
def sample_text(
    model: nn.Module, tokenizer: Any, prompt: str, n: int, seed: int, device: torch.device
) -> str:
    """A sample from the model (temperature 1, top-p 0.9), with its own generator: the training RNG
    is untouched, so sampling never changes what the run computes."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = tokenizer.encode(prompt) or [0]
    limit = getattr(getattr(model, "config", None), "n_ctx", None)
    if limit is not None:
        n = min(n, limit - len(ids))
    logits, state = model(torch.tensor([ids], device=device), None)
    out: list[int] = []
    for _ in range(max(0, n)):
        probs = torch.softmax(logits[0, -1].float().cpu(), dim=-1)
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < 0.9
        sorted_p = sorted_p * keep
        tok = int(order[torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)])
        out.append(tok)
        logits, state = model(torch.tensor([[tok]], device=device), state)
    model.train(was_training)
    return prompt + tokenizer.decode(out)
