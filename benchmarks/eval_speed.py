"""Evaluation speed: what sharing a context's state and batching buy, measured side by side.

A random byte-level RWKV-4 of the bundled model's shape (4 layers, width 256) scores
synthetic PIQA-like items (a long context, four short choices) and LAMBADA-like pairs, each
setting timed ``--repeats`` times; the table shows medians and ratios.

    python benchmarks/eval_speed.py [--items 16] [--context-words 60] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from rwkvkit import load_tokenizer
from rwkvkit.bench.machine import machine_info, machine_line
from rwkvkit.eval.scorer import Scorer
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.testing import random_rwkv4

WORDS = [
    "the",
    "king",
    "queen",
    "lord",
    "speak",
    "hear",
    "night",
    "day",
    "love",
    "death",
    "crown",
    "sword",
    "heart",
    "heaven",
    "earth",
]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--context-words", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    model = random_rwkv4(RWKV4Config(vocab_size=256, n_layer=4, n_embd=256, ffn_dim=1024), seed=0)
    tok = load_tokenizer("byte")
    mc = [
        (ctx, " " + sentence(rng, 3))
        for ctx in (sentence(rng, args.context_words) for _ in range(args.items))
        for _ in range(4)
    ]
    lam = [(sentence(rng, args.context_words), " " + rng.choice(WORDS)) for _ in range(args.items * 2)]
    rows = [
        (
            "multiple choice, 4 choices",
            "context read per choice, batch 1",
            mc,
            {"share_prefix": False, "batch_size": 1},
        ),
        (
            "multiple choice, 4 choices",
            "context read once, batch 4",
            mc,
            {"share_prefix": True, "batch_size": 4},
        ),
        ("lambada-like", "batch 1", lam, {"batch_size": 1}),
        ("lambada-like", "batch 8", lam, {"batch_size": 8}),
    ]
    print(f"# {machine_line(machine_info(args.threads))}")
    print(
        f"# RWKV-4 4x256 byte-level, {args.items} items of ~{args.context_words} words; median of {args.repeats}"
    )
    print(f"{'workload':28} {'setting':34} {'median s':>9} {'req/s':>8} {'speed-up':>9}")
    base: dict[str, float] = {}
    for workload, setting, pairs, kwargs in rows:
        scorer = Scorer(model, tok, **kwargs)  # type: ignore[arg-type]
        t = timed(lambda s=scorer, pr=pairs: s.loglikelihood(pr), args.repeats)
        base.setdefault(workload, t)
        print(f"{workload:28} {setting:34} {t:9.3f} {len(pairs) / t:8.1f} {base[workload] / t:8.2f}x")


if __name__ == "__main__":
    main()
