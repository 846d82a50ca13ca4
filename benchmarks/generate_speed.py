"""Generation speed on a 169M-shaped random RWKV-4 (12 layers, 768 wide, vocab 50277, fp32).

Measures, with medians over repeats:
- prompt processing (chunked prefill through ``rwkvkit.generate``), tokens/s;
- decoding, tokens/s, greedy and with sampling (temperature, top-p, penalties);
- the same prefill with every position's logits computed, to show what ``last_only`` saves;
- optionally (``--official``) the official ``rwkv`` package's decode loop on the same weights.

    python benchmarks/generate_speed.py [--threads 1 2] [--prompt-tokens 512] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rwkvkit.generate import generate_text
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.testing import random_rwkv4, random_rwkv4_state_dict
from rwkvkit.tokenizer import load_tokenizer

CONFIG = RWKV4Config(vocab_size=50277, n_layer=12, n_embd=768, ffn_dim=3072)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--official", action="store_true", help="also time the official rwkv package's decode loop"
    )
    args = ap.parse_args()

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

    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}")
    print(f"model: 169M-shaped random RWKV-4 ({CONFIG}), fp32, CPU; medians of {args.repeats} runs")
    print(f"prompt: {args.prompt_tokens} tokens (prefill chunk 256); decode: {args.new_tokens} new tokens\n")
    cols = [
        "threads",
        "prefill tok/s",
        "prefill all-logits tok/s",
        "decode greedy tok/s",
        "decode sampled tok/s",
    ]
    if official is not None:
        cols.append("official rwkv decode tok/s")
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for threads in args.threads:
        torch.set_num_threads(threads)
        with torch.no_grad():
            generate_text(model, tok, short, max_tokens=4, temperature=0)  # warm-up
            # rates as GenerationResult reports them: prefill time and decode time are timed apart
            prompt_rate = statistics.median(
                generate_text(model, tok, prompt_ids, max_tokens=0).prompt_tokens_per_s
                for _ in range(args.repeats)
            )

            def prefill_all_logits() -> None:
                state = None
                for s in range(0, len(prompt_ids), 256):
                    _, state = model(prompt[None, s : s + 256], state)

            all_rate = len(prompt_ids) / statistics.median(
                _time(prefill_all_logits) for _ in range(args.repeats)
            )

            def decode_rate(**sampling) -> float:
                rates = []
                for _ in range(args.repeats):
                    r = generate_text(
                        model, tok, short, max_tokens=args.new_tokens, stop_token_ids=[], **sampling
                    )
                    assert len(r.token_ids) == args.new_tokens
                    rates.append(r.generated_tokens_per_s)
                return statistics.median(rates)

            greedy = decode_rate(temperature=0)
            sampled = decode_rate(
                temperature=1.0, top_p=0.85, presence_penalty=0.2, frequency_penalty=0.2, seed=0
            )
            row = [str(threads), f"{prompt_rate:.0f}", f"{all_rate:.0f}", f"{greedy:.1f}", f"{sampled:.1f}"]
            if official is not None:
                row.append(f"{official_decode_rate(official, short, args.new_tokens, args.repeats):.1f}")
        print(" | ".join(row), flush=True)


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def official_decode_rate(official, short: list[int], new_tokens: int, repeats: int) -> float:
    """The official package's greedy loop, timed after its prefill, like ours."""
    rates = []
    for _ in range(repeats):
        out, state = official.forward(short, None)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out, state = official.forward([int(torch.argmax(out))], state)
        rates.append(new_tokens / (time.perf_counter() - t0))
    return statistics.median(rates)


if __name__ == "__main__":
    main()
