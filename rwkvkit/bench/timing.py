"""Timing: every contender in this one process, in interleaved rounds, medians reported.

Each round runs every task once (A, B, C, A, B, C, ...; the order rotates every round). On a
shared or throttled machine absolute numbers drift; ratios measured this way stay comparable.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch


@dataclasses.dataclass
class Contender:
    """One implementation: ``step()`` decodes one more token (keeping its own state);
    ``prefill(tokens)`` runs a prompt from an empty state, or is None when it cannot."""

    name: str
    make_step: Callable[[int], Callable[[], None]]  # batch size -> one-token step
    prefill: Callable[[list[int]], None] | None
    batches: tuple[int, ...] = (1,)
    close: Callable[[], None] | None = None  # frees what the contender holds (a peer's native model)


def interleaved(
    tasks: dict[str, Callable[[], float]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each task once per round, rotating the order; returns each task's results per round."""
    names = list(tasks)
    for _ in range(warmup):
        for n in names:
            tasks[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            out[n].append(tasks[n]())
    return out


def decode_task(step: Callable[[], None], tokens: int, batch: int) -> Callable[[], float]:
    """Tokens per second (all sequences of the batch together) over ``tokens`` steps."""

    def run() -> float:
        t = time.perf_counter()
        for _ in range(tokens):
            step()
        return batch * tokens / (time.perf_counter() - t)

    return run


def prefill_task(prefill: Callable[[list[int]], None], length: int, vocab: int) -> Callable[[], float]:
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (length,), generator=gen).tolist()

    def run() -> float:
        t = time.perf_counter()
        prefill(tokens)
        return length / (time.perf_counter() - t)

    return run


def summarize(results: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        n: {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": len(v)}
        for n, v in results.items()
    }
