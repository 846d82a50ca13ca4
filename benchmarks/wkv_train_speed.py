"""WKV forward + backward, and a whole training step, against the alternatives (CPU).

1. The WKV op alone (fwd + bwd, shape B x T x C): the sequential reference loop under autograd,
   the row-max chunked form (wkv4_chunked) under autograd, and the training form
   (wkv4_chunked_matmul) that rwkvkit trains with.
2. A full training step (forward, cross-entropy, backward) of the same random RWKV-4 in rwkvkit
   and in transformers' RwkvForCausalLM (which loops over time in Python on the CPU).

Prints medians and ratios measured side by side in one run.

    python benchmarks/wkv_train_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rwkvkit.bench.machine import machine_info, machine_line
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.ops.wkv4 import initial_wkv_state, wkv4_chunked, wkv4_chunked_matmul, wkv4_reference
from rwkvkit.testing import random_rwkv4


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def wkv_case(fn, B: int, T: int, C: int, chunk: int):
    g = torch.Generator().manual_seed(0)
    td = (torch.rand(C, generator=g) * 7 - 5).requires_grad_()
    u = torch.randn(C, generator=g).requires_grad_()
    k = torch.randn(B, T, C, generator=g).requires_grad_()
    v = torch.randn(B, T, C, generator=g).requires_grad_()

    def run() -> None:
        kw = {} if fn is wkv4_reference else {"chunk_len": chunk}
        out, (num, den, _) = fn(-torch.exp(td), u, k, v, initial_wkv_state(B, C), **kw)
        (out.sum() + num.sum() + den.sum()).backward()

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--C", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, T, C = args.B, args.T, args.C
    print(machine_line(machine_info(torch.get_num_threads())))
    print(f"\n## WKV forward + backward, B={B} T={T} C={C}, chunk {args.chunk}, float32\n")
    rows = []
    for name, fn in [
        ("sequential reference (autograd)", wkv4_reference),
        ("row-max chunked (autograd)", wkv4_chunked),
        ("matmul chunked, rwkvkit training", wkv4_chunked_matmul),
    ]:
        rows.append((name, median_time(wkv_case(fn, B, T, C, args.chunk), args.repeats)))
    base = rows[0][1]
    print("| WKV implementation | median ms | speed-up vs sequential |\n|---|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {t * 1e3:.1f} | {base / t:.1f}x |")

    from transformers import RwkvConfig, RwkvForCausalLM

    V = 256
    cfg = RWKV4Config(vocab_size=V, n_layer=args.layers, n_embd=C, ffn_dim=4 * C, chunk_len=args.chunk)
    ours = random_rwkv4(cfg, seed=0).train()
    hf_cfg = RwkvConfig(
        vocab_size=V, hidden_size=C, num_hidden_layers=args.layers, intermediate_size=4 * C,
        attention_hidden_size=C, context_length=T, rescale_every=0,
    )  # fmt: skip
    hf = RwkvForCausalLM(hf_cfg).train()
    x = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))

    def step_ours() -> None:
        logits, _ = ours(x)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()

    def step_hf() -> None:
        hf(x, labels=x).loss.backward()

    t_ours = median_time(step_ours, args.repeats)
    t_hf = median_time(step_hf, args.repeats)
    n = B * T
    print(f"\n## Training step (fwd + loss + bwd), RWKV-4 L{args.layers} D{C} V{V}, B={B} T={T}\n")
    print("| implementation | median s | tokens/s | speed-up |\n|---|---:|---:|---:|")
    print(f"| transformers RwkvForCausalLM (CPU) | {t_hf:.3f} | {n / t_hf:,.0f} | 1.0x |")
    print(f"| rwkvkit RWKV4 | {t_ours:.3f} | {n / t_ours:,.0f} | {t_hf / t_ours:.1f}x |")


if __name__ == "__main__":
    main()
