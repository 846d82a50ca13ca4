"""Fine-tuning memory and speed on the CPU: LoRA, state tuning and full fine-tuning of the 169M
RWKV-4 shape (12 layers, width 768, the 20B vocabulary), through ``rwkvkit finetune``'s own loop.

Each measurement is a fresh process (peak RSS is a per-process high-water mark): it loads the base,
runs ``--steps`` optimizer steps of ``--batch`` windows of ``--ctx`` tokens, and reports the median
tokens/s of the steps after the first and its peak resident memory. "load + forward" is the floor:
the same process that only loads the base and runs one forward of the batch without gradients.
The run's final checkpoint is not written (its in-memory serialisation is not training's memory).
Rounds interleave the methods and thread counts; the table gives medians over rounds.

    python benchmarks/finetune.py                      # 3 rounds, 1 and 2 threads
    python benchmarks/finetune.py --rounds 1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "finetune.json"
METHODS = ("load + forward", "state", "lora", "full")
# The 169M shape of RWKV-4-Pile-169M.
SHAPE = {"vocab_size": 50277, "n_layer": 12, "n_embd": 768, "ffn_dim": 3072}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args: argparse.Namespace) -> None:
    """One measurement in this process; prints a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    if args.method == "load + forward":
        from rwkvkit.checkpoint import build_model, read_checkpoint

        model = build_model(read_checkpoint(args.base))
        with torch.no_grad():
            model(torch.randint(0, SHAPE["vocab_size"], (args.batch, args.ctx)))
        print(json.dumps({"tokens_per_s": None, "peak_rss_mb": peak_rss_mb(), "n_trainable": 0}))
        return
    from rwkvkit.formats.run import read_run_file
    from rwkvkit.train import run as runfiles
    from rwkvkit.train.config import FinetuneConfig
    from rwkvkit.train.finetune import finetune

    out = Path(args.work) / f"run-{args.method}-{args.threads}"
    cfg = FinetuneConfig(
        data=args.data, out=str(out), model=args.base, method=args.method, ctx_len=args.ctx,
        batch_size=args.batch, steps=args.steps, warmup=0, eval_every=0, save_every=10**9, keep=1,
        log_every=1, threads=args.threads, progress=False,
    )  # fmt: skip
    # The run's final checkpoint is not part of training: safetensors builds each file in memory,
    # which would add a copy of the weights to full fine-tuning's peak alone.
    runfiles.save_checkpoint = lambda *a, **k: None
    finetune(cfg)
    rss = peak_rss_mb()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]  # the first step warms up
    info = read_run_file(out)
    print(
        json.dumps(
            {
                "tokens_per_s": statistics.median(speeds),
                "peak_rss_mb": rss,
                "n_trainable": info["n_trainable"],
            }
        )
    )


def prepare_inputs(work: Path) -> tuple[Path, Path]:
    """A random 169M-shape base (safetensors) and a 20B-tokenized slice of Shakespeare."""
    from safetensors.torch import save_file

    from rwkvkit.models.rwkv4 import RWKV4Config
    from rwkvkit.testing import random_rwkv4_state_dict
    from rwkvkit.train.data import prepare

    base = work / "rwkv4-169m-shape.safetensors"
    if not base.exists():
        sd = random_rwkv4_state_dict(RWKV4Config(**SHAPE), seed=0)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(base))
        del sd
    text = work / "text.txt"
    corpus = sorted((REPO.parent / "shared" / "corpora" / "shakespeare").glob("*.txt"))
    text.write_text("".join(p.read_text(encoding="utf-8") for p in corpus[:3]))
    data = work / "tokens"
    prepare([str(text)], data, tokenizer="20b", progress=False)
    return base, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is not timed)")
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--method", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:
        args.threads = args.threads[0]
        child(args)
        return

    from rwkvkit.bench.machine import machine_info, machine_line

    print(machine_line(machine_info(max(args.threads))))
    load_before = os.getloadavg()[0]
    print(f"load before: {load_before:.2f} (1-minute load average)")
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="rwkvkit-finetune-bench-") as tmp:
        base, data = prepare_inputs(Path(tmp))
        for r in range(args.rounds):
            for threads in args.threads:
                for method in METHODS:
                    cmd = [sys.executable, __file__, "--method", method, "--threads", str(threads), "--base",
                           str(base), "--data", str(data), "--work", tmp, "--steps", str(args.steps), "--ctx",
                           str(args.ctx), "--batch", str(args.batch)]  # fmt: skip
                    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                    if proc.returncode != 0:
                        raise SystemExit(proc.stderr[-3000:])
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                    results.setdefault(f"{method}|{threads}", []).append(row)
                    print(f"round {r + 1} {method:>14} {threads} thr: {row}", file=sys.stderr)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    tokens = args.batch * args.ctx
    print(
        f"\n## Fine-tuning the 169M RWKV-4 shape: batch {args.batch} x ctx {args.ctx} = {tokens} tokens per step, float32\n"
    )
    print("| method | trained parameters | threads | peak RSS (MB) | tokens/s |")
    print("|---|---:|---:|---:|---:|")
    table = {}
    for key, rows in results.items():
        method, threads = key.split("|")
        rss = statistics.median(r["peak_rss_mb"] for r in rows)
        tps = [r["tokens_per_s"] for r in rows if r["tokens_per_s"] is not None]
        speed = statistics.median(tps) if tps else None
        table[key] = {"method": method, "threads": int(threads), "peak_rss_mb": rss, "tokens_per_s": speed,
                      "n_trainable": rows[0]["n_trainable"], "rounds": len(rows)}  # fmt: skip
        shown = f"{speed:,.0f}" if speed else "-"
        print(f"| {method} | {rows[0]['n_trainable']:,} | {threads} | {rss:,.0f} | {shown} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine_info(max(args.threads)), "shape": SHAPE, "batch": args.batch,
                                   "ctx": args.ctx, "load": [load_before, os.getloadavg()[0]],
                                   "results": table}, indent=2) + "\n")  # fmt: skip
    print(f"\nwritten to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
