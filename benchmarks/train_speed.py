"""Training tokens/s, RWKV-4 against the same-size GPT baseline, at long contexts (CPU).

One optimizer step = forward, cross-entropy, backward, AdamW, on one window of --ctx tokens per
sequence, for each model built exactly as `rwkvkit train` builds it. RWKV's cost grows linearly
with the context, attention's quadratically.

    python benchmarks/train_speed.py --threads 1 --ctx 1024 4096
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rwkvkit.bench.machine import machine_info, machine_line
from rwkvkit.train.arch import build
from rwkvkit.train.config import TrainConfig
from rwkvkit.train.init import param_groups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ctx", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(machine_info(torch.get_num_threads())))
    L, C, B = args.n_layer, args.n_embd, args.batch
    print(f"\n## Training tokens/s, L{L} D{C}, byte vocabulary, batch {B}, float32\n")
    print("| ctx | RWKV-4 params | GPT params | RWKV-4 tokens/s | GPT tokens/s | RWKV / GPT |")
    print("|---:|---:|---:|---:|---:|---:|")
    for ctx in args.ctx:
        res = {}
        for arch in ("rwkv4", "gpt"):
            cfg = TrainConfig(
                data="", out="", arch=arch, n_layer=L, n_embd=C, n_head=max(1, C // 64), ctx_len=ctx
            )
            torch.manual_seed(0)
            model, _ = build(cfg, 256)
            model.train()
            opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4)
            x = torch.randint(0, 256, (B, ctx + 1))

            def step(model=model, opt=opt, x=x) -> None:
                logits, _ = model(x[:, :-1])
                F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            step()
            ts = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                step()
                ts.append(time.perf_counter() - t)
            res[arch] = (sum(p.numel() for p in model.parameters()), B * ctx / statistics.median(ts))
        (pr, tr), (pg, tg) = res["rwkv4"], res["gpt"]
        print(f"| {ctx} | {pr:,} | {pg:,} | {tr:,.0f} | {tg:,.0f} | {tr / tg:.2f}x |")


if __name__ == "__main__":
    main()
