"""Load time and peak memory of rwkvkit.load_model on a random 169M-shaped RWKV-4 checkpoint.

Each load runs in a fresh process so peak RSS (VmHWM) belongs to that load alone. The
checkpoint is written once to a temporary folder (~680 MB in fp32). Usage:

    python benchmarks/load_model.py [--repeats 5] [--formats pth safetensors hf]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from rwkvkit.bench.machine import machine_info, machine_line

CHILD = r"""
import json, sys, time
import torch
def peak_rss_mb():
    # VmHWM, not ru_maxrss: ru_maxrss keeps the forking parent's peak across exec.
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024
t0 = time.perf_counter()
import rwkvkit
t1 = time.perf_counter()
rss_before_mb = peak_rss_mb()
model = rwkvkit.load_model(sys.argv[1])
t2 = time.perf_counter()
with torch.no_grad():
    model([1])  # one token: proves the weights are usable
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_token_s": t3 - t2,
                  "rss_before_load_mb": rss_before_mb, "peak_rss_mb": peak_rss_mb()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--formats", nargs="+", default=["pth", "safetensors", "hf"])
    args = parser.parse_args()

    from rwkvkit.convert import convert
    from rwkvkit.models.rwkv4 import RWKV4Config
    from rwkvkit.testing import random_rwkv4_state_dict

    config = RWKV4Config(vocab_size=50277, n_layer=12, n_embd=768, ffn_dim=3072)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.pth"
        sd = random_rwkv4_state_dict(config)
        n_params = sum(t.numel() for t in sd.values())
        torch.save(sd, src)
        del sd
        paths = {"pth": src}
        for fmt in args.formats:
            if fmt != "pth":
                paths[fmt] = convert(src, Path(tmp) / f"model.{fmt}", fmt)
        size_mb = src.stat().st_size / 2**20
        rows = []
        for fmt, path in paths.items():
            runs = [
                json.loads(subprocess.check_output([sys.executable, "-c", CHILD, str(path)], text=True))
                for _ in range(args.repeats)
            ]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            rows.append((fmt, med))
    print(
        f"# load_model, random RWKV-4 {n_params / 1e6:.0f}M params fp32 ({size_mb:.0f} MB file), "
        f"median of {args.repeats} fresh processes"
    )
    print(f"# {machine_line(machine_info(torch.get_num_threads()))}")
    print("| format | load s | RSS before load MB | peak RSS MB | growth / file size | first token s |")
    print("|---|---|---|---|---|---|")
    for fmt, med in rows:
        growth = (med["peak_rss_mb"] - med["rss_before_load_mb"]) / size_mb  # 1.0 = one copy of the weights
        print(
            f"| {fmt} | {med['load_s']:.2f} | {med['rss_before_load_mb']:.0f} | {med['peak_rss_mb']:.0f} | "
            f"{growth:.2f} | {med['first_token_s']:.3f} |"
        )


if __name__ == "__main__":
    main()
