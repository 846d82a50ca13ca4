"""RWKV-7 decode (and prefill) speed of rwkvkit next to the official ``rwkv`` package, on a random
checkpoint of the 0.1B World shape (12 layers, 768 wide, vocab 65536, head size 64).

Both models live in one fresh process per dtype (the official package's RWKV-7 path is chosen
with RWKV_V7_ON=1 at import, CUDA kernels off: a CPU benchmark) and are timed in alternation, a
block of decode steps each in turn, so that load from other work on the machine hits both alike.
Decode: median time of a one-token forward over all steps; prefill: median of ``--rounds`` forwards
of ``--prefill`` tokens. The official package offers fp32/fp16/bf16 for RWKV-7, no int8, so rwkvkit's int8 (``quantize="int8"``) is
timed next to the official bf16.

    python benchmarks/rwkv7_decode.py [--steps 48] [--prefill 128] [--rounds 3] [--dtypes fp32 bf16 int8] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's rwkvkit, not an installed copy

CHILD = r"""
import json, os, statistics, sys, time
os.environ["RWKV_V7_ON"] = "1"; os.environ["RWKV_JIT_ON"] = "1"; os.environ["RWKV_CUDA_ON"] = "0"
import torch
import rwkvkit
from rwkv.model import RWKV
path, dtype, steps, prefill, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
load_args = {"fp32": {}, "bf16": {"dtype": torch.bfloat16}, "int8": {"quantize": "int8"}}[dtype]
ours = rwkvkit.load_model(path, **load_args)
# The official package has no int8 for RWKV-7 on the CPU: int8 is compared with its bf16.
official = RWKV(path[:-4], f"cpu {'bf16' if dtype == 'int8' else dtype}")
prompt = list(range(1, prefill + 1))

def ours_prefill():
    with torch.no_grad():
        return ours(prompt)[1]

def ours_step(token, state):
    with torch.no_grad():
        logits, state = ours([token], state)
    return int(logits[0, -1].argmax()), state

def official_prefill():
    return official.forward(prompt, None)[1]

def official_step(token, state):
    logits, state = official.forward([token], state)
    return int(logits.argmax()), state

impls = {"rwkvkit": (ours_prefill, ours_step), "official": (official_prefill, official_step)}
result = {name: {"prefill": [], "decode": []} for name in impls}
states = {}
for _ in range(rounds):
    for name, (pre, _) in impls.items():
        t0 = time.perf_counter(); states[name] = pre(); result[name]["prefill"].append(time.perf_counter() - t0)
tokens = {name: 0 for name in impls}
block = 4
for _ in range(steps // block):
    for name, (_, step) in impls.items():
        for _ in range(block):
            t0 = time.perf_counter()
            tokens[name], states[name] = step(tokens[name], states[name])
            result[name]["decode"].append(time.perf_counter() - t0)
print(json.dumps({name: {key: statistics.median(v[key][1:] if key == "decode" else v[key]) for key in v}
                  for name, v in result.items()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--prefill", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    from rwkvkit.bench.machine import machine_info, machine_line
    from rwkvkit.models.rwkv7 import RWKV7Config
    from rwkvkit.testing import random_rwkv7_state_dict

    config = RWKV7Config(vocab_size=65536, n_layer=12, n_embd=768, ffn_dim=3072)
    print(machine_line(machine_info(args.threads)))
    print("RWKV-7 0.1B shape, random weights")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rwkv7-0.1b.pth"
        torch.save(random_rwkv7_state_dict(config, seed=0), path)
        print(
            f"| dtype | impl | decode ms/token | decode tok/s | prefill {args.prefill} tok s | prefill tok/s |"
        )
        print("|---|---|---|---|---|---|")
        for dtype in args.dtypes:
            argv = [str(path), dtype, str(args.steps), str(args.prefill), str(args.rounds)]
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True, check=True
            )
            rows = json.loads(proc.stdout.strip().splitlines()[-1])
            for name, r in rows.items():
                label = "rwkvkit" if name == "rwkvkit" else "official rwkv 0.8.32"
                print(
                    f"| {dtype} | {label} | {r['decode'] * 1e3:.1f} | {1 / r['decode']:.1f} | "
                    f"{r['prefill']:.2f} | {args.prefill / r['prefill']:.0f} |"
                )
            ours, theirs = rows["rwkvkit"], rows["official"]
            print(
                f"| {dtype} | speed ratio rwkvkit/official | | {theirs['decode'] / ours['decode']:.2f}x | "
                f"| {theirs['prefill'] / ours['prefill']:.2f}x |"
            )


if __name__ == "__main__":
    main()
