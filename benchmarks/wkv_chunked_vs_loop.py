"""Chunked WKV (the parallel mode, used for prefill and training) against the token-by-token loop,
for RWKV-5/6 (ops/wkv5.py) and RWKV-7 (ops/wkv7.py), forward and forward+backward, at the
released models' head layout (H heads of 64; 0.1B: H = 12).

    python benchmarks/wkv_chunked_vs_loop.py [--T 256 1024] [--heads 12] [--repeats 3]

Prints a table of median seconds and the loop/chunked ratio, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's rwkvkit

from rwkvkit.bench.machine import machine_info, machine_line
from rwkvkit.ops.wkv5 import wkv5_chunked, wkv5_reference
from rwkvkit.ops.wkv7 import wkv7_chunked, wkv7_reference


def inputs(op: str, T: int, H: int, N: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (1, T, H, N)
    r, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    state = torch.zeros(1, H, N, N)
    if op == "wkv5":
        log_w = -torch.exp(torch.randn(shape, generator=g) - 2)
        return [r, log_w, k, v, torch.randn(H, N, generator=g), state]
    log_w = -0.6065 * torch.sigmoid(torch.randn(shape, generator=g))
    kk = F.normalize(torch.randn(shape, generator=g), dim=-1)
    return [r, log_w, k, v, -kk, kk * torch.sigmoid(torch.randn(shape, generator=g)), state]


def timed(fn, args: list[torch.Tensor], backward: bool, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        leaves = [a.clone().requires_grad_(backward) for a in args]
        t0 = time.perf_counter()
        out, state = fn(*leaves)
        if backward:
            (out.sum() + state.sum()).backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ops = {"wkv5": (wkv5_reference, wkv5_chunked), "wkv7": (wkv7_reference, wkv7_chunked)}
    print(machine_line(machine_info(torch.get_num_threads())))
    print(f"B=1, H={args.heads}, N=64, float32, chunk 32")
    print("| op | T | pass | loop s | chunked s | loop/chunked |")
    print("|---|---|---|---|---|---|")
    for name, (loop, chunked) in ops.items():
        for T in args.T:
            x = inputs(name, T, args.heads)
            for backward in (False, True):
                a = timed(loop, x, backward, args.repeats)
                b = timed(chunked, x, backward, args.repeats)
                label = "fwd+bwd" if backward else "fwd"
                print(f"| {name} | {T} | {label} | {a:.3f} | {b:.3f} | {a / b:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
