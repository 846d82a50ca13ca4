"""What weight-only int8 and int4 (and bf16) cost in accuracy, on real text and on the 169M shape.

1. Real text: by default rwkvkit's bundled byte-level model (trained on Shakespeare by
   scripts/train_default_model.sh, whose ``prepare --val-fraction 0.05`` holds out the last 5% of
   the corpus files joined in name order: bits per byte are measured on bytes from inside that
   held-out tail, never trained on). With ``--model train`` (or without a bundled model) this script trains a small
   byte-level RWKV-4 (vocabulary 256, 2 layers x 128, ffn 512) on Shakespeare
   (/work/shared/corpora/shakespeare, or --corpus) for a few minutes with plain PyTorch autograd
   through rwkvkit's model, then measures bits per byte on held-out plays (never trained on) with
   the weights in fp32, bf16 and int8, all through ``rwkvkit.load_model``. The model is small and
   briefly trained: the int8 cost on large trained models may differ (it is usually smaller
   relative to their bits per byte, as their weights are smoother); this measures that the int8
   path keeps a trained model's predictions, not the cost for every model.
2. Random 169M-shaped weights (labelled as such): max logit error and KL(fp32 || quantized) per
   token over a random prompt. Not a perplexity: random weights have nothing to lose.

The issue's bounds: int8 costs <= 0.005 bits/byte, int4 <= 0.05.

    python benchmarks/quant_quality.py --json benchmarks/results/quant_quality.json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout's rwkvkit, not an installed copy

from rwkvkit import load_model  # noqa: E402
from rwkvkit.bench import WORKDIR  # noqa: E402
from rwkvkit.bench.contenders import random_checkpoint  # noqa: E402
from rwkvkit.bench.machine import machine_info  # noqa: E402
from rwkvkit.fileio import write_json  # noqa: E402
from rwkvkit.models.rwkv4 import RWKV4, RWKV4Config  # noqa: E402
from rwkvkit.testing import random_rwkv4_state_dict  # noqa: E402

EVAL_WORKS = ("hamlet_gut.txt", "macbeth_gut.txt")  # held out from training


def read_corpus(folder: Path) -> tuple[bytes, bytes]:
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise SystemExit(f"no .txt files in {folder}; pass --corpus")
    train = b"\n".join(f.read_bytes() for f in files if f.name not in EVAL_WORKS)
    held = b"\n".join(f.read_bytes() for f in files if f.name in EVAL_WORKS) or files[-1].read_bytes()
    return train, held


def bundled_held_out(folder: Path) -> bytes:
    """Text from inside the bundled model's validation split: the last 5% of the corpus files
    joined in name order (what ``rwkvkit prepare`` held out); starting at the last 4.5% leaves a
    margin for the end-of-text separators and the directory order prepare used."""
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise SystemExit(f"no .txt files in {folder}; pass --corpus")
    joined = b"\n".join(f.read_bytes() for f in files)
    return joined[len(joined) - int(0.045 * len(joined)) :]


def train_byte_model(train: bytes, seconds: float, out: Path, seed: int = 0) -> dict:
    config = RWKV4Config(vocab_size=256, n_layer=2, n_embd=128, ffn_dim=512, chunk_len=16)
    torch.manual_seed(seed)
    model = RWKV4(config)
    sd = random_rwkv4_state_dict(config, seed)
    sd["emb.weight"] = sd["emb.weight"] * 0.1
    model.load_state_dict(sd)
    data = torch.tensor(list(train), dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    B, T, steps, losses = 8, 64, 0, []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        idx = torch.randint(0, len(data) - T - 1, (B,), generator=g)
        batch = torch.stack([data[i : i + T + 1] for i in idx.tolist()])
        logits, _ = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        steps += 1
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    return {
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "batch": [B, T],
        "final_train_loss_bits": statistics_tail(losses) / math.log(2),
    }


def statistics_tail(values: list[float], n: int = 20) -> float:
    tail = values[-n:]
    return sum(tail) / len(tail)


def bits_per_byte(model: torch.nn.Module, text: bytes, length: int, window: int = 512) -> float:
    """Cross-entropy of the next byte, averaged over ``length`` bytes, carrying the state across windows."""
    data = torch.tensor(list(text[: length + 1]), dtype=torch.long)
    total, count, state = 0.0, 0, None
    with torch.inference_mode():
        for s in range(0, length, window):
            x = data[s : min(s + window, length)][None]
            y = data[s + 1 : s + 1 + x.shape[1]]
            logits, state = model(x, state)
            total += F.cross_entropy(logits[0].float(), y, reduction="sum").item()
            count += y.numel()
    return total / count / math.log(2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="/work/shared/corpora/shakespeare")
    p.add_argument("--train-seconds", type=float, default=420)
    p.add_argument(
        "--model",
        default="bundled",
        help="byte-level model to evaluate: 'bundled' (rwkvkit's default model, trained on Shakespeare), "
        "'train' (train a small one here), or a checkpoint path",
    )
    p.add_argument("--eval-bytes", type=int, default=20000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default=str(WORKDIR))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine_info(args.threads)}

    train, held = read_corpus(Path(args.corpus))
    from rwkvkit.defaults import default_model_path

    if args.model == "bundled" and default_model_path() is not None:
        ckpt = default_model_path()
        result["model"] = "rwkvkit's bundled default model (byte-level RWKV-4, trained on Shakespeare)"
        held = bundled_held_out(Path(args.corpus))
        eval_text = "the bundled model's validation split (last 4.5% of the corpus)"
    elif args.model in ("bundled", "train"):
        ckpt = workdir / "shakespeare-byte-rwkv4.pth"
        result["training"] = train_byte_model(train, args.train_seconds, ckpt)
        print("trained:", result["training"], flush=True)
        eval_text = f"held-out plays {', '.join(EVAL_WORKS)}"
    else:
        ckpt = Path(args.model)
        result["model"] = str(ckpt)
        eval_text = f"plays {', '.join(EVAL_WORKS)}"
    rows = {}
    for name, kw in {
        "fp32": {},
        "bf16": {"dtype": torch.bfloat16},
        "int8": {"quantize": "int8"},
        "int4": {"quantize": "int4"},
    }.items():
        rows[name] = bits_per_byte(load_model(ckpt, **kw), held, args.eval_bytes)
        print(f"{name}: {rows[name]:.4f} bits/byte on {args.eval_bytes} held-out bytes", flush=True)
    result["shakespeare_bits_per_byte"] = rows
    result["eval"] = {"text": eval_text, "bytes": args.eval_bytes}
    result["bits_per_byte_cost"] = {k: v - rows["fp32"] for k, v in rows.items() if k != "fp32"}

    # The 169M shape, random weights: how far int8 moves the logits.
    path = random_checkpoint("169m", workdir)
    prompt = torch.randint(0, 50277, (1, 64), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref, _ = load_model(path)(prompt)
        out = {}
        variants = {
            "bf16": {"dtype": torch.bfloat16},
            "int8": {"quantize": "int8"},
            "int4": {"quantize": "int4"},
        }
        for name, kw in variants.items():
            got, _ = load_model(path, **kw)(prompt)
            kl = F.kl_div(got.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="none")
            out[name] = {
                "max_abs_logit_error": (got - ref).abs().max().item(),
                "logit_spread": ref.abs().max().item(),
                "mean_kl_nats_per_token": kl.sum(-1).mean().item(),
                "top1_agreement": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            }
            print(f"169M random, {name}: {out[name]}", flush=True)
    result["random_169m_vs_fp32"] = out
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
