"""Models and data with known answers, shared by the evaluation tests (test_eval_*.py and
test_eval_harness.py): a byte bigram model whose every log-likelihood is known in closed form, a
token-by-token reference computation, and a small random RWKV-4 over bytes."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.state import RecurrentState
from rwkvkit.testing import random_rwkv4
from rwkvkit.tokenizer import ByteTokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak. Ünïcødé ✓\n"


class NoEosByteTokenizer(ByteTokenizer):
    """Bytes as tokens, without an end-of-text token."""

    eos_id = None  # type: ignore[assignment]


@dataclasses.dataclass
class CounterState(RecurrentState):
    seen: Tensor  # (1, B, 1): tokens read so far; the bigram model needs no memory


class Bigram(nn.Module):
    """P(next | current) from a fixed table: every log-likelihood is known in closed form."""

    def __init__(self, probs: Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(probs.log())
        self.calls = 0

    def forward(
        self, tokens: Tensor | list[int], state: CounterState | None = None, *, last_only: bool = False
    ) -> tuple[Tensor, CounterState]:
        t = torch.as_tensor(tokens, dtype=torch.long)
        t = t[None] if t.dim() == 1 else t
        self.calls += 1
        seen = torch.zeros(1, t.shape[0], 1) if state is None else state.seen
        logits = self.logits[t[:, -1:] if last_only else t].float()
        return logits, CounterState(seen + t.shape[1])

    def step(self, tokens: Tensor, state: CounterState | None = None) -> tuple[Tensor, CounterState]:
        logits, state = self.forward(tokens[:, None], state)
        return logits[:, -1], state


P_NEXT = 0.6  # probability of the designated successor; the rest is spread evenly


def successor_model(chain: str) -> Bigram:
    """Byte bigram: after each character of ``chain`` comes the next one with P_NEXT; bytes with
    no successor predict uniformly."""
    probs = torch.full((256, 256), 1 / 256, dtype=torch.float64)
    for a, b in zip(chain.encode(), chain.encode()[1:], strict=False):
        probs[a] = (1 - P_NEXT) / 255
        probs[a, b] = P_NEXT
    return Bigram(probs)


def bigram_logprob(model: Bigram, ids: list[int]) -> float:
    """The direct computation: sum of log P(ids[i+1] | ids[i]) from the table."""
    table = model.logits.detach().double().log_softmax(-1)
    return sum(float(table[a, b]) for a, b in itertools.pairwise(ids))


LO = math.log((1 - P_NEXT) / 255)  # an off-successor byte after a byte that has a successor
UNIFORM = math.log(1 / 256)


def byte_rwkv() -> nn.Module:
    """A small random RWKV-4 over bytes (WKV chunks of 8, so longer reads cross chunk boundaries)."""
    cfg = RWKV4Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=48, chunk_len=8)
    return random_rwkv4(cfg, seed=5)


_BRUTE: dict[tuple[int, tuple[int, ...]], list[float]] = {}


def brute_logprobs(model: nn.Module, ids: list[int]) -> list[float]:
    """log P(ids[i+1] | ids[:i+1]) with the model called one token at a time."""
    key = (id(model), tuple(ids))
    if key not in _BRUTE:
        _BRUTE[key] = _brute_logprobs(model, ids)
    return _BRUTE[key]


def _brute_logprobs(model: nn.Module, ids: list[int]) -> list[float]:
    out, state = [], None
    with torch.no_grad():
        for a, b in itertools.pairwise(ids):
            logits, state = model([a], state)
            out.append(float(logits[0, -1].double().log_softmax(-1)[b]))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
