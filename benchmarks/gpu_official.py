"""The official ``rwkv`` package's decode and prefill, measured in a process of its own.

The package reads its switches (``RWKV_V7_ON``, ``RWKV_CUDA_ON``, ``RWKV_JIT_ON``) once, at import,
and ``RWKV_V7_ON=1`` turns every other version off, so benchmarks/gpu.py runs one of these per
model and switch setting:

    python benchmarks/gpu_official.py JOB.json      # prints one JSON line of results

JOB.json: {"model": "x.pth", "strategy": "cuda fp16", "v7": true, "cuda_kernels": false,
"decode_tokens": 64, "prefill_tokens": 4096, "rounds": 3}. With ``cuda_kernels`` the package
compiles its CUDA kernels first (nvcc and ninja, through torch.utils.cpp_extension); the seconds
that took are reported as ``compile_s``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


def main() -> None:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    os.environ["RWKV_V7_ON"] = "1" if job["v7"] else "0"
    os.environ["RWKV_CUDA_ON"] = "1" if job["cuda_kernels"] else "0"
    os.environ["RWKV_JIT_ON"] = "1"  # the package's default
    import torch

    start = time.perf_counter()
    from rwkv.model import RWKV  # compiles the CUDA kernels here when asked

    compile_s = time.perf_counter() - start
    model = RWKV(job["model"][: -len(".pth")], job["strategy"])
    cuda = job["strategy"].startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    out: dict = {"compile_s": round(compile_s, 1)}
    # decode: one token per call after a short prompt, greedy on fixed ids (no sampling cost)
    _, state = model.forward(list(range(1, 17)), None)
    rounds = []
    for _ in range(job["rounds"]):
        sync()
        t0 = time.perf_counter()
        for i in range(job["decode_tokens"]):
            _, state = model.forward([i % 200 + 1], state)
        sync()
        rounds.append(job["decode_tokens"] / (time.perf_counter() - t0))
    out["decode_tok_s"] = statistics.median(rounds)
    # prefill: the prompt from the empty state, once to warm up (kernels, allocator) and then timed
    n = job["prefill_tokens"]
    prompt = [(i * 7919) % 200 + 1 for i in range(n)]  # ids < 256: any vocabulary, the smoke test's too
    if job.get("prefill_warmup", True):
        model.forward(prompt[:256], None)
    sync()
    t0 = time.perf_counter()
    model.forward(prompt, None)
    sync()
    out["prefill_tok_s"] = n / (time.perf_counter() - t0)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
