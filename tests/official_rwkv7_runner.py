"""Run the official ``rwkv`` package's RWKV-7 forward in its own process and save the logits.

The package picks its RWKV-7 code path from ``RWKV_V7_ON`` at import time, which would switch every
other version off in the test process, so the RWKV-7 comparison runs this script as a subprocess:

    python official_rwkv7_runner.py JOBS.json

JOBS.json is a list of {"model": "x.pth", "chunks": [[ids], ...], "out": "y.pt"}: for each model the
token lists are fed in turn, carrying the state, and each call's ``full_output`` logits (T, V) are
saved as a list of float32 tensors in the job's "out" file. A job may name a "state" file (a
torch.save'd list of the package's state tensors) to start from instead of zeros. One process
serves many models because the package's import (TorchScript compilation) is the slow part.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["RWKV_V7_ON"] = "1"
os.environ["RWKV_JIT_ON"] = "0"
os.environ["RWKV_CUDA_ON"] = "0"

import torch


def main() -> None:
    from rwkv.model import RWKV  # imported only now: it reads the switches above

    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    for job in jobs:
        if not job["model"].endswith(".pth"):
            raise SystemExit("the official RWKV-7 loader appends .pth itself: give paths ending in .pth")
        model = RWKV(job["model"][: -len(".pth")], "cpu fp32")
        state = torch.load(job["state"], weights_only=True) if "state" in job else None
        outs = []
        for chunk in job["chunks"]:
            logits, state = model.forward(chunk, state, full_output=True)
            outs.append(logits.float().reshape(len(chunk), -1).clone())
        torch.save(outs, job["out"])


if __name__ == "__main__":
    main()
