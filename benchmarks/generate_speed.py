"""Generation speed on a 169M-shaped random RWKV-4 (12 layers, 768 wide, vocab 50277, fp32).

Measures, with medians over repeats:
- prompt processing (chunked prefill through ``rwkvkit.generate``), tokens/s;
- decoding, tokens/s, greedy and with sampling (temperature, top-p, penalties);
- the same prefill with every position's logits computed, to show what ``last_only`` saves;
- optionally (``--official``) the official ``rwkv`` package's decode loop on the same weights.

    python benchmarks/generate_speed.py [--threads 1 2] [--clock cpu] [--official] [--repeats 5]

On a machine shared with other jobs, wall time measures the neighbours too; `--clock cpu` with
one thread times this process alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rwkvkit.bench.machine import machine_info, machine_line
from rwkvkit.generate import generate_text
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.testing import random_rwkv4, random_rwkv4_state_dict
from rwkvkit.tokenizer import load_tokenizer

CONFIG = RWKV4Config(vocab_size=50277, n_layer=12, n_embd=768, ffn_dim=3072)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def median_time(fn, repeats: int, clock) -> float:
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or this process's CPU seconds (for one thread on a machine shared with other jobs)",
    )
    ap.add_argument(
        "--official", action="store_true", help="also time the official rwkv package's decode loop"
    )
    args = ap.parse_args()
    clock = CLOCKS[args.clock]

    model = random_rwkv4(CONFIG, seed=0)
    tok = load_tokenizer("20b")
    prompt = torch.randint(
        0, CONFIG.vocab_size, (args.prompt_tokens,), generator=torch.Generator().manual_seed(0)
    )
    prompt_ids = prompt.tolist()
    short = prompt_ids[:16]
    official = None
    if args.official:
        os.environ.setdefault("RWKV_JIT_ON", "0")
        os.environ.setdefault("RWKV_CUDA_ON", "0")
        from rwkv.model import RWKV as OfficialRWKV

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "m.pth"
            torch.save(random_rwkv4_state_dict(CONFIG, seed=0), path)
            official = OfficialRWKV(str(path), strategy="cpu fp32")

    print(f"{machine_line(machine_info(torch.get_num_threads()))} Clock: {args.clock}.")
    print(
        f"model: 169M-shaped random RWKV-4 (12 x 768, vocab 50277), fp32, CPU; medians of {args.repeats} runs"
    )
    print(
        f"prompt: {args.prompt_tokens} tokens (prefill chunks of 256); decode: {args.new_tokens} new tokens\n"
    )
    cols = [
        "threads",
        "prefill tok/s",
        "prefill, all logits tok/s",
        "decode greedy tok/s",
        "decode sampled tok/s",
    ]
    if official is not None:
        cols.append("official rwkv greedy decode tok/s")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    sampled = dict(temperature=1.0, top_p=0.85, presence_penalty=0.2, frequency_penalty=0.2, seed=0)
    for threads in args.threads:
        torch.set_num_threads(threads)
        with torch.no_grad():
            generate_text(model, tok, short, max_tokens=4, temperature=0)  # warm-up

            def prefill_all_logits() -> None:  # what prefill costs when every position's logits are made
                state = None
                for s in range(0, len(prompt_ids), 256):
                    _, state = model(prompt[None, s : s + 256], state)

            def gen(n: int, **kw) -> None:
                r = generate_text(model, tok, short, max_tokens=n, stop_token_ids=[], **kw)
                assert len(r.token_ids) == n

            t_prefill = median_time(
                lambda: generate_text(model, tok, prompt_ids, max_tokens=0), args.repeats, clock
            )
            t_all = median_time(prefill_all_logits, args.repeats, clock)
            t_short = median_time(lambda: gen(0), args.repeats, clock)  # subtracted: decode alone remains
            t_greedy = median_time(lambda: gen(args.new_tokens, temperature=0), args.repeats, clock) - t_short
            t_sampled = median_time(lambda: gen(args.new_tokens, **sampled), args.repeats, clock) - t_short
            n, m = len(prompt_ids), args.new_tokens
            row = [
                str(threads),
                f"{n / t_prefill:.0f}",
                f"{n / t_all:.0f}",
                f"{m / t_greedy:.1f}",
                f"{m / t_sampled:.1f}",
            ]
            if official is not None:

                def official_loop() -> None:
                    out, state = official.forward(short, None)
                    for _ in range(args.new_tokens):
                        out, state = official.forward([int(torch.argmax(out))], state)

                t_off_short = median_time(lambda: official.forward(short, None), args.repeats, clock)
                row.append(f"{m / (median_time(official_loop, args.repeats, clock) - t_off_short):.1f}")
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
