"""What the engine costs over a bare decode loop, on a 169M-shaped random RWKV-4 (12 x 768, vocab
50277, fp32, CPU).

For batch 1 and 8, greedy and sampled (temperature 1, top-p 0.9, presence and frequency penalties),
two ways of decoding ``--tokens`` tokens per row from the same prompt state:

- ``bare``: the floor, a loop of one batched model call and one batched sampling call per token
  (one SamplingParams for the whole batch, one generator), no rows, stops or events;
- ``engine``: ``rwkvkit.engine.Engine`` with one row per batch row (each with its own params,
  penalties and generator), run to the end.

Timed in interleaved rounds in one process (so load from other work hits both alike); medians.

    python benchmarks/engine.py [--threads 1 2] [--tokens 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's rwkvkit, not an installed copy

from benchmarks._machine import machine  # noqa: E402

from rwkvkit.engine import Engine, Request, prefill  # noqa: E402
from rwkvkit.models.rwkv4 import RWKV4Config  # noqa: E402
from rwkvkit.sampling import Penalties, SamplingParams, make_generator, next_token  # noqa: E402
from rwkvkit.testing import random_rwkv4  # noqa: E402

CONFIG = RWKV4Config(vocab_size=50277, n_layer=12, n_embd=768, ffn_dim=3072)
SETTINGS = {
    "greedy": SamplingParams(temperature=0),
    "sampled": SamplingParams(top_p=0.9, presence_penalty=0.2, frequency_penalty=0.2),
}


@torch.no_grad()
def bare(model, start, batch: int, params: SamplingParams, tokens: int) -> None:
    state = type(start.state).cat([start.state] * batch)
    logits = start.logits.expand(batch, -1)
    penalties = Penalties(batch, CONFIG.vocab_size, params) if params.uses_penalties else None
    gen = make_generator(0)
    for i in range(tokens):
        ids = next_token(logits, params, penalties, gen)
        if penalties is not None:
            penalties.update(ids)
        if i < tokens - 1:  # the last token is not read, as in the engine (no keep_state)
            logits, state = model.step(ids, state)


def engine(model, start, batch: int, params: SamplingParams, tokens: int) -> None:
    eng = Engine(model)
    for i in range(batch):
        eng.add(Request(params=params, max_tokens=tokens, seed=i, start=start))
    for _ in eng.run():
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "engine.json")
    args = ap.parse_args()
    model = random_rwkv4(CONFIG, seed=0)
    start = prefill(model, list(range(1, 17)))
    rows = []
    lines = [
        f"machine: {machine()}",
        f"model: 169M-shaped random RWKV-4, fp32; {args.tokens} tokens per row; medians of {args.rounds} "
        "interleaved rounds",
        "",
        "| threads | batch | sampling | bare tok/s | engine tok/s | engine / bare |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in (1, 8):
            for name, params in SETTINGS.items():
                times: dict[str, list[float]] = {"bare": [], "engine": []}
                engine(model, start, batch, params, 2)  # warm-up
                for _ in range(args.rounds):
                    for label, fn in (("bare", bare), ("engine", engine)):
                        t0 = time.perf_counter()
                        fn(model, start, batch, params, args.tokens)
                        times[label].append(time.perf_counter() - t0)
                rate = {k: batch * args.tokens / statistics.median(v) for k, v in times.items()}
                rows.append({"threads": threads, "batch": batch, "sampling": name, **rate})
                lines.append(
                    f"| {threads} | {batch} | {name} | {rate['bare']:.1f} | {rate['engine']:.1f} | "
                    f"{rate['engine'] / rate['bare']:.2f} |"
                )
                print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
