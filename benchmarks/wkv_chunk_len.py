"""Prefill cost of the chunked WKV against its chunk length (the ``chunk_len`` config knob).

The chunked form does O(T L C) elementwise work plus T / L Python-level iterations, so the best
L is small on the CPU. One layer of the 169M shape (C = 768), T = 512, random k, v and decays in
the trained models' range; every L in one process, interleaved rounds, medians.

    python benchmarks/wkv_chunk_len.py                # the row-max chunked op alone
    python benchmarks/wkv_chunk_len.py --whole-model  # a 169M prefill through the model (matmul form)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's rwkvkit

from rwkvkit.bench.machine import machine_info, machine_line
from rwkvkit.bench.timing import interleaved
from rwkvkit.ops.wkv4 import initial_wkv_state, wkv4_chunked


def whole_model(args: argparse.Namespace) -> int:

    import rwkvkit
    from rwkvkit.bench import WORKDIR
    from rwkvkit.bench.contenders import random_checkpoint

    torch.set_num_threads(args.threads)
    model = rwkvkit.load_model(random_checkpoint("169m", WORKDIR))
    tokens = torch.randint(0, 50277, (1, args.tokens), generator=torch.Generator().manual_seed(1))

    def task(L: int):
        def run() -> float:
            for block in model.blocks:
                block.att.chunk_len = L
            t = time.perf_counter()
            with torch.inference_mode():
                model(tokens, last_only=True)
            return args.tokens / (time.perf_counter() - t)

        return run

    res = interleaved({L: task(int(L)) for L in args.chunk_lens.split(",")}, args.rounds)
    print(machine_line(machine_info(args.threads)))
    print(f"\n| chunk_len | 169M prefill of {args.tokens} tokens, tokens/s (median) | min - max |")
    print("|---:|---:|---:|")
    for L, v in res.items():
        print(f"| {L} | {statistics.median(v):.1f} | {min(v):.1f} - {max(v):.1f} |")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--channels", type=int, default=768)
    p.add_argument("--chunk-lens", default="4,8,16,32")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--whole-model", action="store_true", help="time a 169M prefill (tokens/s) instead")
    args = p.parse_args()
    if args.whole_model:
        return whole_model(args)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    T, C = args.tokens, args.channels
    k, v = torch.randn(1, T, C, generator=g), torch.randn(1, T, C, generator=g)
    w, u = -torch.exp(torch.rand(C, generator=g) * 6 - 4), torch.randn(C, generator=g)
    state = initial_wkv_state(1, C)

    def task(L: int):
        def run() -> float:
            t = time.perf_counter()
            wkv4_chunked(w, u, k, v, state, L)
            return time.perf_counter() - t

        return run

    res = interleaved({str(L): task(int(L)) for L in args.chunk_lens.split(",")}, args.rounds)
    print(machine_line(machine_info(args.threads)))
    print(f"\n| chunk_len | ms per layer, T={T}, C={C} (median) | min - max |")
    print("|---:|---:|---:|")
    for L, times in res.items():
        print(
            f"| {L} | {1e3 * statistics.median(times):.1f} | {1e3 * min(times):.1f} - {1e3 * max(times):.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
