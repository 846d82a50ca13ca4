"""Tokenizer throughput on the Shakespeare corpus: MB/s of UTF-8 text, median of a few runs.

The World fast path must stay above 20 MB/s on two CPU cores, so that tokenizing a
training set or a long prompt never dominates. Prints a table; writes no files.

    python benchmarks/tokenizer_speed.py [--runs 3] [--max-mb 5] [--corpus DIR] [--clock cpu]

On a machine shared with other jobs, wall time measures the neighbours; `--clock cpu` times
this process's CPU seconds instead (every path timed here runs on one thread).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rwkvkit.tokenizer import Gpt20BTokenizer, Tokenizer, WorldTokenizer, WorldTokenizerRef

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "shakespeare"


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def median_seconds(fn: Callable[[], object], runs: int, clock: Callable[[], float]) -> float:
    """Median time of `runs` calls: robust to a neighbour's burst on a shared machine."""
    times = []
    for _ in range(runs):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def measure(tok: Tokenizer, text: str, runs: int, clock: Callable[[], float]) -> tuple[float, float, bool]:
    """(encode MB/s, decode MB/s, round trip exact) for one tokenizer."""
    mb = len(text.encode("utf-8")) / 1e6
    ids = tok.encode(text)  # warm-up, and the ids to decode
    encode_s = median_seconds(lambda: tok.encode(text), runs, clock)
    decode_s = median_seconds(lambda: tok.decode(ids), runs, clock)
    return mb / encode_s, mb / decode_s, tok.decode(ids) == text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs per cell; the median is shown")
    parser.add_argument("--max-mb", type=float, default=None, help="use only the first MB of the corpus")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="folder of .txt files")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="wall time or process CPU time"
    )
    args = parser.parse_args()

    files = sorted(args.corpus.glob("*.txt")) if args.corpus.is_dir() else []
    if not files:
        print(f"skipped: no corpus at {args.corpus} (pass --corpus DIR)")
        return
    text = "".join(f.read_text(encoding="utf-8") for f in files)
    if args.max_mb is not None:
        text = text.encode("utf-8")[: int(args.max_mb * 1e6)].decode("utf-8", errors="ignore")
    size_mb = len(text.encode("utf-8")) / 1e6

    world = WorldTokenizer()
    rows = [
        (f"world ({world.backend})", world),
        ("world (python reference)", WorldTokenizerRef()),
        ("20b (tokenizers)", Gpt20BTokenizer()),
    ]
    print(
        f"corpus: {len(files)} files, {size_mb:.2f} MB; median of {args.runs} runs, {args.clock} clock; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; Python {sys.version.split()[0]}"
    )
    print(f"{'tokenizer':<28} {'encode MB/s':>12} {'decode MB/s':>12} {'round trip':>11}")
    for label, tok in rows:
        encode_mbs, decode_mbs, exact = measure(tok, text, args.runs, CLOCKS[args.clock])
        print(f"{label:<28} {encode_mbs:>12.1f} {decode_mbs:>12.1f} {'exact' if exact else 'NOT exact':>11}")


if __name__ == "__main__":
    main()
