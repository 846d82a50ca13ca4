"""Decode and prefill speed of rwkvkit and its peers on random RWKV-4 weights, side by side.

Runs ``rwkvkit.bench`` (the package behind ``rwkvkit bench``) on the 169M and/or 430M shapes with
every contender in one process, interleaved rounds, medians; and measures the machine's matmul
peak (fp32, bf16) in the same run, so prefill can be stated as a fraction of it.
Install the peers first: ``bash benchmarks/setup.sh``.

    python benchmarks/speed.py --shape 169m --json benchmarks/results/speed_169m.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout's rwkvkit, not an installed copy

from rwkvkit.bench import WORKDIR  # noqa: E402
from rwkvkit.bench.contenders import SHAPES, random_checkpoint  # noqa: E402
from rwkvkit.bench.run import run_bench  # noqa: E402
from rwkvkit.bench.table import format_table  # noqa: E402
from rwkvkit.fileio import write_json  # noqa: E402

ALL = "fp32,bf16,fp16,int8,plain-fp32,rwkv-fp32,rwkv-bf16,hf-fp32,rwkvcpp-fp32,rwkvcpp-fp16"


def matmul_peak(threads: int, rounds: int, tokens: int, width: int) -> dict[str, float]:
    """GFLOP/s of the prefill-shaped product (tokens x C) @ (C x 4C), fp32 and bf16, interleaved."""
    torch.set_num_threads(threads)
    out: dict[str, list[float]] = {"fp32": [], "bf16": []}
    mats = {
        "fp32": (torch.randn(tokens, width), torch.randn(4 * width, width)),
        "bf16": (torch.randn(tokens, width).bfloat16(), torch.randn(4 * width, width).bfloat16()),
    }
    flops = 2 * tokens * width * 4 * width
    for r in range(rounds + 1):
        for name, (x, w) in mats.items():
            t = time.perf_counter()
            for _ in range(3):
                torch.nn.functional.linear(x, w)
            if r:  # the first round warms up
                out[name].append(3 * flops / (time.perf_counter() - t) / 1e9)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="169m", choices=tuple(SHAPES))
    p.add_argument("--contenders", default=ALL)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="1 on a shared machine: OpenMP threads waiting on descheduled siblings stall",
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--decode-tokens", type=int, default=8)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--reference", default="rwkv.cpp fp32")
    p.add_argument("--workdir", default=str(WORKDIR))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    workdir = Path(args.workdir)
    path = random_checkpoint(args.shape, workdir)
    result = run_bench(
        path,
        [c for c in args.contenders.split(",") if c],
        threads=args.threads,
        rounds=args.rounds,
        decode_tokens=args.decode_tokens,
        prefill_len=args.prefill,
        batch8=True,
        workdir=workdir,
    )
    shape = SHAPES[args.shape]
    result["shape"] = {"name": args.shape, **shape}
    result["matmul_peak_gflops"] = matmul_peak(args.threads, args.rounds, args.prefill, shape["n_embd"])
    # Matmul work of a prefill that returns the last logits only: every block matrix on every token.
    C, Fd, L = shape["n_embd"], shape["ffn_dim"], shape["n_layer"]
    block_params = L * (5 * C * C + 2 * C * Fd)
    result["prefill_matmul_gflop"] = 2 * block_params * args.prefill / 1e9
    print(format_table(result, args.reference))
    print(f"\nmatmul peak here (GFLOP/s): {result['matmul_peak_gflops']}")
    for name, s in result["prefill_tok_s"].items():
        gflops = result["prefill_matmul_gflop"] * s["median"] / args.prefill
        print(f"prefill {name}: {gflops:.1f} GFLOP/s of matmul work")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
