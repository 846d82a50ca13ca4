"""Where a decode step's time goes: ``torch.profiler`` over one-token steps of random RWKV-7 0.1B-
shape (and RWKV-4 169M-shape) weights, per precision, one thread. The share in the native kernels
(``rwkvkit::`` ops: the weight-streaming products and the WKV update) is the part bounded by memory
bandwidth; the rest is the step's per-token overhead (small PyTorch ops, Python, dispatch), which
is what stands between rwkvkit and a peer with a leaner step. Profiling adds its own per-op cost,
so read shares, not absolute times.

    python benchmarks/profile_step.py --json benchmarks/results/profile_step.json
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout's rwkvkit, not an installed copy

from rwkvkit import load_model  # noqa: E402
from rwkvkit.bench import WORKDIR  # noqa: E402
from rwkvkit.bench.contenders import random_checkpoint  # noqa: E402
from rwkvkit.bench.machine import machine_info  # noqa: E402
from rwkvkit.fileio import write_json  # noqa: E402
from rwkvkit.ops import native  # noqa: E402

VARIANTS = {
    "fp32": {},
    "bf16": {"dtype": torch.bfloat16},
    "int8": {"quantize": "int8"},
    "int4": {"quantize": "int4"},
}


def profile_step(model: torch.nn.Module, steps: int) -> dict:
    tok = torch.zeros(1, dtype=torch.long)
    with torch.inference_mode():
        _, state = model(tok[:, None])
        for _ in range(4):  # warm-up
            logits, state = model.step(tok, state)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()  # inside: starting and stopping the profiler takes ~1 s
            for _ in range(steps):
                logits, state = model.step(tok, state)
                tok = logits.argmax(-1)
            wall = (time.perf_counter() - t) / steps
    self_us: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for e in prof.key_averages():
        self_us[e.key] += e.self_cpu_time_total
        calls[e.key] += e.count
    total = sum(self_us.values())
    native_us = sum(v for k, v in self_us.items() if k.startswith("rwkvkit::"))
    top = sorted(self_us.items(), key=lambda kv: -kv[1])[:10]
    return {
        "ms_per_step_profiled": wall * 1e3,
        "ops_per_step": sum(calls.values()) / steps,
        "native_share": native_us / total if total else 0.0,
        "top": [{"op": k, "share": v / total, "calls_per_step": calls[k] / steps} for k, v in top],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["v7-0.1b", "169m"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workdir", default=str(WORKDIR))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    native.load(wait=True)
    result: dict = {"machine": machine_info(1), "profiles": {}}
    for shape in args.shapes:
        path = random_checkpoint(shape, Path(args.workdir))
        for name, kw in VARIANTS.items():
            r = profile_step(load_model(path, **kw), args.steps)
            result["profiles"][f"{shape} {name}"] = r
            print(f"{shape} {name}: {r['ms_per_step_profiled']:.1f} ms/step, {r['ops_per_step']:.0f} ops/step, "
                  f"native kernels {r['native_share']:.0%}", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
