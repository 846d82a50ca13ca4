"""Which sampling settings make the bundled model's text read as Shakespeare: the measurement
behind the defaults of ``rwkvkit generate`` and ``rwkvkit chat``.

For each setting, the bundled byte-level model continues a few prompts with several seeds, and
two numbers describe the text:

- **real words**: the share of the generated words (runs of letters and apostrophes) that occur
  in Shakespeare's works (../shared/corpora/shakespeare): word salad scores low;
- **distinct bigrams**: unique word pairs / all word pairs: text stuck in a loop scores low
  (greedy decoding repeats itself).

The same two numbers for 400-byte pieces of the real plays are the target. Usage:

    python benchmarks/sampling_defaults.py [--seeds 6] [--bytes 400] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import statistics
from pathlib import Path

import torch

import rwkvkit
from rwkvkit.bench.machine import machine_info, machine_line
from rwkvkit.defaults import DEFAULT_MODEL

RESULTS = Path(__file__).parent / "results" / "sampling_defaults.json"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "shakespeare"
PROMPTS = ["ROMEO:\n", "KING HENRY:\n", "First Citizen:\n", "HAMLET:\nTo be"]
# (temperature, top_p): the sampler's own defaults, common choices, and greedy
SETTINGS = [(1.0, 1.0), (0.9, 0.95), (0.8, 0.95), (0.8, 0.9), (0.7, 0.9), (0.6, 0.9), (0.5, 0.9), (0.0, 1.0)]
WORD = re.compile(r"[A-Za-z']+")


def words(text: str) -> list[str]:
    return [w.lower().strip("'") for w in WORD.findall(text) if w.strip("'")]


def scores(texts: list[str], vocab: set[str]) -> tuple[float, float]:
    """(share of real words, distinct word bigrams), over all texts together."""
    ws = [words(t) for t in texts]
    flat = [w for t in ws for w in t]
    bigrams = [(a, b) for t in ws for a, b in itertools.pairwise(t)]
    real = sum(w in vocab for w in flat) / max(1, len(flat))
    distinct = len(set(bigrams)) / max(1, len(bigrams))
    return real, distinct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--bytes", type=int, default=400, help="bytes (tokens) generated per sample")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = "\n".join(
        p.read_text(encoding="utf-8", errors="replace") for p in sorted(args.corpus.glob("*.txt"))
    )
    vocab = set(words(text))
    rng = random.Random(0)
    pieces = [text[i : i + args.bytes] for i in (rng.randrange(len(text) - args.bytes) for _ in range(200))]
    reference = scores(pieces, vocab)

    model = rwkvkit.load_model(DEFAULT_MODEL)
    tok = rwkvkit.load_tokenizer("byte")
    rows = []
    examples = {}
    for temperature, top_p in SETTINGS:
        texts = []
        for prompt in PROMPTS:
            for seed in range(args.seeds):
                r = rwkvkit.generate_text(
                    model, tok, prompt, max_tokens=args.bytes, temperature=temperature, top_p=top_p, seed=seed
                )
                texts.append(r.text)
                if temperature == 0:
                    break  # greedy: every seed gives the same text
        real, distinct = scores(texts, vocab)
        rows.append(
            {"temperature": temperature, "top_p": top_p, "real_words": real, "distinct_bigrams": distinct}
        )
        examples[f"{temperature}/{top_p}"] = PROMPTS[0] + texts[0][:300]
    print(machine_line(machine_info(args.threads)))
    print(f"bundled model, {len(PROMPTS)} prompts x {args.seeds} seeds x {args.bytes} bytes per setting\n")
    print(f"{'temperature':>11} {'top_p':>6} {'real words':>11} {'distinct bigrams':>17}")
    for r in rows:
        print(
            f"{r['temperature']:>11} {r['top_p']:>6} {r['real_words']:>10.1%} {r['distinct_bigrams']:>17.1%}"
        )
    print(f"{'the plays':>18} {reference[0]:>11.1%} {reference[1]:>17.1%}")
    for name, sample in examples.items():
        print(f"\n--- {name}\n{sample}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine_info(args.threads), "rows": rows,
                                   "reference": {"real_words": reference[0], "distinct_bigrams": reference[1]},
                                   "examples": examples, "median_real_words": statistics.median(
                                       r["real_words"] for r in rows)}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
