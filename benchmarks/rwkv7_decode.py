"""RWKV-7 decode (and prefill) speed of rwkvkit next to the official ``rwkv`` package, on a random
checkpoint of the 0.1B World shape (12 layers, 768 wide, vocab 65536, head size 64).

Both run in fresh processes on the same .pth, alternating for ``--rounds`` rounds per dtype; each
process reports the median time of a one-token forward over ``--steps`` decode steps (after a
prefill) and the time of one ``--prefill``-token forward; the table shows the medians over rounds. The official package's RWKV-7 path is chosen with
RWKV_V7_ON=1 at import (CUDA kernels off: this is a CPU benchmark); it offers fp32/fp16/bf16, no int8.

    python benchmarks/rwkv7_decode.py [--steps 32] [--prefill 256] [--dtypes fp32 bf16] [--threads N] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's rwkvkit, not an installed copy

OURS = r"""
import json, statistics, sys, time
import torch
import rwkvkit
path, dtype, steps, prefill = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = rwkvkit.load_model(path, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
prompt = list(range(1, prefill + 1))
with torch.no_grad():
    t0 = time.perf_counter(); logits, state = model(prompt); t_prefill = time.perf_counter() - t0
    token, times = int(logits[0, -1].argmax()), []
    for _ in range(steps):
        t0 = time.perf_counter()
        logits, state = model([token], state)
        token = int(logits[0, -1].argmax())
        times.append(time.perf_counter() - t0)
print(json.dumps({"decode_s": statistics.median(times[2:]), "prefill_s": t_prefill}))
"""

OFFICIAL = r"""
import json, os, statistics, sys, time
os.environ["RWKV_V7_ON"] = "1"; os.environ["RWKV_JIT_ON"] = "1"; os.environ["RWKV_CUDA_ON"] = "0"
import torch
from rwkv.model import RWKV
path, dtype, steps, prefill = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = RWKV(path[:-4], f"cpu {dtype}")
prompt = list(range(1, prefill + 1))
t0 = time.perf_counter(); logits, state = model.forward(prompt, None); t_prefill = time.perf_counter() - t0
token, times = int(logits.argmax()), []
for _ in range(steps):
    t0 = time.perf_counter()
    logits, state = model.forward([token], state)
    token = int(logits.argmax())
    times.append(time.perf_counter() - t0)
print(json.dumps({"decode_s": statistics.median(times[2:]), "prefill_s": t_prefill}))
"""


def run(code: str, path: Path, dtype: str, steps: int, prefill: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path), dtype, str(steps), str(prefill)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prefill", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per implementation; medians")
    args = parser.parse_args()

    from rwkvkit.models.rwkv7 import RWKV7Config
    from rwkvkit.testing import random_rwkv7_state_dict

    config = RWKV7Config(vocab_size=65536, n_layer=12, n_embd=768, ffn_dim=3072)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"{args.threads} threads, torch {torch.__version__}; RWKV-7 0.1B shape, random weights")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rwkv7-0.1b.pth"
        torch.save(random_rwkv7_state_dict(config, seed=0), path)
        print(
            f"| dtype | impl | decode ms/token | decode tok/s | prefill {args.prefill} tok s | prefill tok/s |"
        )
        print("|---|---|---|---|---|---|")
        for dtype in args.dtypes:
            runs: dict[str, list[dict]] = {"rwkvkit": [], "official rwkv 0.8.32": []}
            for _ in range(args.rounds):  # alternate the two, so load changes on the machine hit both
                runs["rwkvkit"].append(run(OURS, path, dtype, args.steps, args.prefill, args.threads))
                runs["official rwkv 0.8.32"].append(
                    run(OFFICIAL, path, dtype, args.steps, args.prefill, args.threads)
                )
            rows = {}
            for name, rs in runs.items():
                r = {key: statistics.median(x[key] for x in rs) for key in ("decode_s", "prefill_s")}
                rows[name] = r
                print(f"| {dtype} | {name} | {r['decode_s'] * 1e3:.1f} | {1 / r['decode_s']:.1f} | "
                      f"{r['prefill_s']:.2f} | {args.prefill / r['prefill_s']:.0f} |")  # fmt: skip
            ours, theirs = rows["rwkvkit"], rows["official rwkv 0.8.32"]
            print(f"| {dtype} | ratio rwkvkit/official (speed) | | {theirs['decode_s'] / ours['decode_s']:.2f}x | "
                  f"| {theirs['prefill_s'] / ours['prefill_s']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
