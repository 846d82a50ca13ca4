"""Validation bits per byte of finished training runs, on the whole validation split.

Each run is evaluated the way it was trained (its own --ctx-len windows, state carried across
--bptt-len pieces), on every non-overlapping window of the validation split, so two runs made
from the same prepared data are compared on exactly the same bytes.

    python scripts/eval_runs.py runs/default/rwkv4 runs/default/gpt
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rwkvkit
from rwkvkit.formats.run import latest_checkpoint, read_run_file
from rwkvkit.train.config import TrainConfig
from rwkvkit.train.data import TokenData
from rwkvkit.train.validate import validation_loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", help="the prepared data folder (default: the one each run was trained on)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| run | arch | params | step | validation tokens | nats/token | bits/byte |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for run in args.runs:
        info = read_run_file(run)
        cfg = dataclasses.replace(TrainConfig.from_saved(info), eval_windows=10**9)
        data = TokenData.open(args.data or cfg.data)  # cfg.data: relative to where the run was started
        model = rwkvkit.load_model(run)
        n_windows = (len(data.val) - 1) // cfg.ctx_len
        loss = validation_loss(model, data, cfg, torch.device("cpu"), nullcontext)
        bpb = loss / math.log(2) / (data.manifest.get("bytes_per_token") or 1.0)
        step = latest_checkpoint(run).stem.split("-")[1]
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"| {run} | {info['arch']} | {n_params:,} | {int(step)} | {n_windows * cfg.ctx_len:,} | {loss:.4f} | {bpb:.4f} |"
        )


if __name__ == "__main__":
    main()
