"""What checking a .pth's CRC-32s costs at load: ``load_model`` on a random 169M-shaped RWKV-4
.pth with the check (rwkvkit.formats.torchzip.verify_zip) and without it, and the check alone.

One process, interleaved rounds (with, without, check alone, ...), medians; the file is in the
page cache after the first round, so the numbers are CPU cost, not disk speed. Usage:

    python benchmarks/pth_crc.py [--rounds 5] [--dtype fp32|bf16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import rwkvkit.checkpoint as checkpoint
from rwkvkit.bench.machine import machine_info, machine_line
from rwkvkit.dtypes import DTYPES
from rwkvkit.formats.torchzip import verify_zip
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.testing import random_rwkv4_state_dict

RESULTS = Path(__file__).parent / "results" / "pth_crc.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = RWKV4Config(vocab_size=50277, n_layer=12, n_embd=768, ffn_dim=3072)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pth"
        sd = {k: v.to(DTYPES[args.dtype]) for k, v in random_rwkv4_state_dict(config).items()}
        torch.save(sd, path)
        size_mb = path.stat().st_size / 1e6
        del sd

        def load_with() -> None:
            rwkvkit_load(path)

        def load_without() -> None:
            saved = checkpoint.verify_zip
            checkpoint.verify_zip = lambda p: None  # the loader as it was before the check
            try:
                rwkvkit_load(path)
            finally:
                checkpoint.verify_zip = saved

        def check_alone() -> None:
            verify_zip(path)

        tasks = {"load_model, CRC checked": load_with, "load_model, no CRC check": load_without,
                 "verify_zip alone": check_alone}  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in tasks}
        load_without()  # warm the page cache
        for _ in range(args.rounds):
            for name, fn in tasks.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(t) for name, t in times.items()}
    extra = medians["load_model, CRC checked"] - medians["load_model, no CRC check"]
    print(machine_line(machine_info(args.threads)))
    print(f"{size_mb:.0f} MB .pth ({args.dtype}), {args.rounds} interleaved rounds, medians:")
    for name, m in medians.items():
        print(f"  {name:28s} {m:7.3f} s")
    print(f"  CRC check costs {extra:+.3f} s per load ({extra / medians['load_model, no CRC check']:+.1%}); "
          f"verify_zip reads {size_mb / medians['verify_zip alone']:.0f} MB/s")  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine_info(args.threads), "dtype": args.dtype,
                                   "size_mb": size_mb, "rounds": args.rounds, "times_s": times,
                                   "medians_s": medians}, indent=2) + "\n")  # fmt: skip


def rwkvkit_load(path: Path) -> None:
    model = checkpoint.load_model(path)
    del model


if __name__ == "__main__":
    main()
