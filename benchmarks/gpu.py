"""rwkvkit on a GPU against the official package and flash-linear-attention's model.

For RWKV-7 0.1B/0.4B/1.5B and RWKV-4 169M/1.5B shapes (random weights, the same for every
contender), in one process, each contender after its own warm-up (kernel loading, Triton
autotuning, graph capture):

- decode: tokens/s of the one-token step at batch 1 and 64, fp16 weights: rwkvkit's step replayed
  from CUDA graphs (what the engine runs) and eager, and the official package (``cuda fp16``, its
  own CUDA kernels where they compile: ``--official-cuda``); ids are fixed, so no sampling cost;
  plus the engine end to end (64 greedy rows) for the smallest shape;
- prefill: tokens/s reading a 4096-token prompt from the empty state (last logits only), fp16;
- training: tokens/s of forward + backward at context 4096, fp32 weights under bf16 autocast (what
  ``rwkvkit train`` runs on a GPU), against fla's RWKV7ForCausalLM the same way (RWKV-7 only; fla
  has no RWKV-4), and, for the smallest shapes, the ops' PyTorch forms (the kernels' gain);
- memory: peak GPU memory reading 25k, 50k and 100k-token prompts through ``engine.prefill``
  (chunks of 4096 tokens): flat in the prompt's length.

Every figure is the median of rounds timed with the device synchronised. ``--budget`` seconds bound
the whole run: what does not fit is reported as skipped, never guessed. Results go to ``--json``;
``benchmarks/report.py`` turns them into BENCHMARKS.md's GPU section.

    python benchmarks/gpu.py --json benchmarks/results/gpu.json --budget 300 [--official-cuda]
    python benchmarks/gpu.py --smoke     # tiny shapes on the CPU: checks this script, measures nothing
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rwkvkit.checkpoint import FP32_PARAMS  # noqa: E402
from rwkvkit.cuda_graphs import GraphedStep  # noqa: E402
from rwkvkit.engine import Engine, Request, prefill  # noqa: E402
from rwkvkit.inference import optimize_for_inference  # noqa: E402
from rwkvkit.models.rwkv4 import RWKV4, RWKV4Config  # noqa: E402
from rwkvkit.models.rwkv7 import RWKV7, RWKV7Config  # noqa: E402
from rwkvkit.ops import wkv4, wkv5, wkv7  # noqa: E402
from rwkvkit.sampling import SamplingParams  # noqa: E402

# name -> (version, config). RWKV-7's low-rank widths are the released models' for each width.
SHAPES: dict[str, tuple[str, Any]] = {
    "rwkv7-0.1b": ("7", RWKV7Config(vocab_size=65536, n_layer=12, n_embd=768, ffn_dim=3072)),
    "rwkv7-0.4b": ("7", RWKV7Config(vocab_size=65536, n_layer=24, n_embd=1024, ffn_dim=4096)),
    "rwkv7-1.5b": ("7", RWKV7Config(vocab_size=65536, n_layer=24, n_embd=2048, ffn_dim=8192,
                                    decay_lora=96, iclr_lora=96, value_lora=64, gate_lora=256)),
    "rwkv4-169m": ("4", RWKV4Config(vocab_size=50277, n_layer=12, n_embd=768, ffn_dim=3072)),
    "rwkv4-1.5b": ("4", RWKV4Config(vocab_size=50277, n_layer=24, n_embd=2048, ffn_dim=8192)),
}  # fmt: skip
SMOKE = {
    "rwkv7-tiny": ("7", RWKV7Config(vocab_size=256, n_layer=2, n_embd=64, ffn_dim=128, head_size=16)),
    "rwkv4-tiny": ("4", RWKV4Config(vocab_size=256, n_layer=2, n_embd=64, ffn_dim=128)),
}
SMALL = ("rwkv7-0.1b", "rwkv4-169m", "rwkv7-tiny", "rwkv4-tiny")  # also measured with the PyTorch forms


class Budget:
    """Seconds left for the whole run; a measurement that would not fit is skipped."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def allows(self, seconds: float) -> bool:
        return self.left() > seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rounds(fn: Callable[[], Any], device: torch.device, rounds: int) -> list[float]:
    """Seconds per call of ``fn`` in each round (after the caller's warm-up)."""
    out = []
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": len(values),
    }


# --------------------------------------------------------------------------------------------
# Models with random weights, made on the device (a CPU generator is too slow for 1.5B)


@torch.no_grad()
def random_model(
    version: str, config: Any, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> nn.Module:
    """Weights of realistic scale: unit embeddings, 1/sqrt(fan-in) matrices, mix vectors in (0, 1),
    decays spread like trained models' (RWKV-4 time_decay in (-5, 2), RWKV-7 w0 in (-6, -1));
    the decay parameters stay float32 as a checkpoint load keeps them (checkpoint.FP32_PARAMS)."""
    with torch.device("meta"):
        model = (RWKV7 if version == "7" else RWKV4)(config)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        last = name.rsplit(".", 1)[-1]
        if last == "time_decay":
            p.uniform_(-5.0, 2.0, generator=gen)
        elif last == "w0":
            p.uniform_(-6.0, -1.0, generator=gen)
        elif last in ("a0", "v0", "time_first"):
            p.normal_(0.0, 0.5, generator=gen)
        elif last in ("k_k", "k_a"):
            p.fill_(1.0)
        elif last == "r_k":
            p.normal_(0.0, 0.1, generator=gen)
        elif name.startswith("emb."):
            p.normal_(0.0, 1.0, generator=gen)
        elif p.dim() == 2:  # (out, in) linear weights and (C, D) / (D, C) low-rank factors
            p.normal_(0.0, 0.5 / math.sqrt(max(p.shape)), generator=gen)
        elif last == "weight":  # layer and group norms
            p.fill_(1.0)
        elif last == "bias":
            p.zero_()
        else:  # token-shift mix vectors
            p.uniform_(0.0, 1.0, generator=gen)
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] not in FP32_PARAMS:
            p.data = p.data.to(dtype)
    return model.eval()


@contextlib.contextmanager
def pytorch_forms() -> Iterator[None]:
    """Run every op's PyTorch forms on CUDA for a while (the kernels' baseline), then restore."""
    saved = {}
    for op in (wkv4, wkv5, wkv7):
        op.BACKENDS.lookup(torch.zeros(1, device="cuda"))  # let the loader run first
        saved[op] = op.BACKENDS._table.get(("cuda", None))
        op.BACKENDS.register(op.BACKENDS.default, "cuda")
    try:
        yield
    finally:
        for op, backend in saved.items():
            op.BACKENDS.unregister("cuda")
            if backend is not None:
                op.BACKENDS.register(backend, "cuda")


# --------------------------------------------------------------------------------------------
# Measurements


def decode(model: nn.Module, batch: int, steps: int, rounds: int, graphs: bool) -> dict[str, float]:
    """Aggregate tokens/s of ``steps`` one-token steps at ``batch`` rows, continuing a 16-token prompt."""
    device = next(model.parameters()).device
    step = GraphedStep(model) if graphs else model.step
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(1, min(1000, model.config.vocab_size), (batch, 16), generator=gen).to(device)
    with torch.no_grad():
        _, state = model(ids)
        tokens = ids[:, -1]
        box = [state]

        def run() -> None:
            for _ in range(steps):
                _, box[0] = step(tokens, box[0])

        for _ in range(2 if graphs else 1):  # graphs: capture, then one replayed warm-up
            _, box[0] = step(tokens, box[0])
        secs = timed_rounds(run, device, rounds)
    return summary([batch * steps / s for s in secs])


def engine_decode(model: nn.Module, rows: int, max_tokens: int) -> dict[str, float]:
    """The engine end to end: ``rows`` greedy rows, sampling and bookkeeping included."""
    device = next(model.parameters()).device
    greedy = SamplingParams(temperature=0)
    for _ in range(2):  # the first pass captures the graphs
        engine = Engine(model)
        for i in range(rows):
            engine.add(Request(prompt=[1 + i % 200, 2, 3, 4], params=greedy, max_tokens=max_tokens))
        while engine.num_waiting:
            engine.step()
        sync(device)
        t0 = time.perf_counter()
        n = sum(1 for e in engine.run() if e.token is not None)
        sync(device)
        secs = time.perf_counter() - t0
    return {"tokens": n, "tok_s": n / secs}


def prefill_speed(model: nn.Module, tokens: int, rounds: int) -> dict[str, float]:
    device = next(model.parameters()).device
    vocab = min(1000, model.config.vocab_size)
    ids = torch.randint(1, vocab, (1, tokens), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        model(ids[:, :256], last_only=True)  # kernels and autotuning for this shape
        model(ids, last_only=True)
        secs = timed_rounds(lambda: model(ids, last_only=True), device, rounds)
    return summary([tokens / s for s in secs])


def train_speed(
    forward_loss: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor, rounds: int
) -> dict[str, float]:
    """Tokens/s of forward + backward (no optimizer step) under bf16 autocast."""
    device = ids.device

    def one() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward_loss(ids)
        loss.backward()

    one()  # autotuning, allocator
    secs = timed_rounds(one, device, rounds)
    return summary([ids.numel() / s for s in secs])


def ours_loss(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(ids: torch.Tensor) -> torch.Tensor:
        logits, _ = model(ids[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())

    return f


def fla_model(config: RWKV7Config, device: torch.device) -> nn.Module:
    """flash-linear-attention's RWKV7ForCausalLM of the same shape (fused norms, fused cross entropy)."""
    from fla.models import RWKV7Config as FlaConfig
    from fla.models import RWKV7ForCausalLM

    cfg = FlaConfig(
        hidden_size=config.n_embd, num_hidden_layers=config.n_layer, head_dim=config.head_size,
        intermediate_size=config.ffn_dim, vocab_size=config.vocab_size, decay_low_rank_dim=config.decay_lora,
        a_low_rank_dim=config.iclr_lora, v_low_rank_dim=config.value_lora, gate_low_rank_dim=config.gate_lora,
    )  # fmt: skip
    return RWKV7ForCausalLM(cfg).to(device)


def fla_loss(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda ids: model(input_ids=ids, labels=ids).loss


def long_prompt_memory(model: nn.Module, lengths: list[int], chunk: int) -> dict[str, float]:
    """Peak GPU memory above the weights while ``engine.prefill`` reads a prompt of each length."""
    device = next(model.parameters()).device
    out = {}
    for n in lengths:
        vocab = min(1000, model.config.vocab_size)
        ids = torch.randint(1, vocab, (n,), generator=torch.Generator().manual_seed(n)).tolist()
        sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        prefill(model, ids, prefill_chunk=chunk)
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else float("nan")
        out[str(n)] = {"peak_mib": peak / 2**20, "tok_s": n / (time.perf_counter() - t0)}
    return out


def official(model: nn.Module, version: str, strategy: str, cuda_kernels: bool, args: Any) -> dict[str, Any]:
    """The official package on the same weights, in its own process (benchmarks/gpu_official.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        pth = Path(tmp) / "model.pth"
        dtype = torch.float16 if "fp16" in strategy else torch.float32
        torch.save({k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}, pth)
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({
            "model": str(pth), "strategy": strategy, "v7": version == "7", "cuda_kernels": cuda_kernels,
            "decode_tokens": args.official_decode, "prefill_tokens": args.official_prefill, "rounds": args.rounds,
        }))  # fmt: skip
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("gpu_official.py")), str(job)],
            capture_output=True, text=True, timeout=args.official_timeout,
        )  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:  # the child's last stderr line says why (a compile error, say)
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------------


def run_shape(name: str, version: str, config: Any, device: torch.device, args: Any, budget: Budget) -> dict:
    res: dict[str, Any] = {"version": version, "config": {k: v for k, v in vars(config).items()}}
    infer_dtype = torch.float16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    model = optimize_for_inference(random_model(version, config, device, infer_dtype))
    res["params"] = sum(p.numel() for p in model.parameters())
    res["build_s"] = time.perf_counter() - t0

    def attempt(key: str, seconds: float, fn: Callable[[], Any]) -> None:
        if not budget.allows(seconds):
            res[key] = {"skipped": f"not enough time left ({budget.left():.0f} s)"}
            return
        t = time.perf_counter()
        try:
            res[key] = fn()
        except Exception as e:  # one failing contender must not lose the others' numbers
            res[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
        print(f"  {name} {key}: {time.perf_counter() - t:.1f} s", flush=True)

    steps = args.decode_steps
    attempt("decode_b1_graphs", 20, lambda: decode(model, 1, steps, args.rounds, graphs=True))
    attempt("decode_b1_eager", 20, lambda: decode(model, 1, steps, args.rounds, graphs=False))
    attempt("decode_b64_graphs", 20, lambda: decode(model, 64, steps, args.rounds, graphs=True))
    if name in SMALL:
        attempt("engine_b64", 20, lambda: engine_decode(model, 64, steps))
    attempt("prefill", 20, lambda: prefill_speed(model, args.prefill, args.rounds))
    if name in SMALL and device.type == "cuda":
        with pytorch_forms():
            attempt("prefill_pytorch_forms", 30, lambda: prefill_speed(model, args.prefill, args.rounds))
    if args.official:
        strategy = "cuda fp16" if device.type == "cuda" else "cpu fp32"
        attempt("official", 60, lambda: official(model, version, strategy, False, args))
        if args.official_cuda and device.type == "cuda":
            attempt("official_cuda_kernels", 150, lambda: official(model, version, strategy, True, args))
    if name in ("rwkv7-0.1b", "rwkv7-tiny"):
        lengths = [int(n) for n in args.memory_lengths.split(",")]
        attempt("long_prompt_memory", 60, lambda: long_prompt_memory(model, lengths, args.memory_chunk))
    model = None  # the inference copy goes before the training one is made
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # training: fp32 weights under bf16 autocast, as `rwkvkit train` runs
    train_model = random_model(version, config, device, torch.float32).train()
    vocab = min(1000, config.vocab_size)
    ids = torch.randint(
        1, vocab, (args.train_batch, args.ctx + 1), generator=torch.Generator().manual_seed(2)
    )
    ids = ids.to(device)
    attempt("train", 40, lambda: train_speed(ours_loss(train_model), ids, args.rounds))
    if name in SMALL and device.type == "cuda":
        with pytorch_forms():
            attempt("train_pytorch_forms", 60, lambda: train_speed(ours_loss(train_model), ids, args.rounds))
    train_model = None
    if version == "7" and args.fla and device.type == "cuda":
        attempt("train_fla", 60, lambda: train_speed(fla_loss(fla_model(config, device)), ids, args.rounds))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    for package in ("triton", "fla", "rwkv", "transformers"):
        with contextlib.suppress(Exception):
            info[package] = __import__(package).__version__
    return info


def table(results: dict[str, Any]) -> str:
    """One line per shape and measurement: the figure and the ratio the issue asks about."""

    def med(x: Any) -> str:
        if not isinstance(x, dict):
            return "-"
        if "median" in x:
            return f"{x['median']:,.0f}"
        if "tok_s" in x:
            return f"{x['tok_s']:,.0f}"
        return (x.get("skipped") or x.get("error") or "-")[:40]

    lines = [f"{'shape':<12} {'measure':<24} {'tokens/s':>14}"]
    for name, res in results["shapes"].items():
        for key, value in res.items():
            if key in ("version", "config", "params", "build_s"):
                continue
            if key.startswith("official") and isinstance(value, dict) and "decode_tok_s" in value:
                lines.append(f"{name:<12} {key + ' decode B=1':<24} {value['decode_tok_s']:>14,.0f}")
                lines.append(f"{name:<12} {key + ' prefill':<24} {value['prefill_tok_s']:>14,.0f}")
            elif key == "long_prompt_memory" and "error" not in value and "skipped" not in value:
                for n, m in value.items():
                    lines.append(f"{name:<12} {'peak MiB at ' + n:<24} {m['peak_mib']:>14,.0f}")
            else:
                lines.append(f"{name:<12} {key:<24} {med(value):>14}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds for the whole run")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated, from: " + ", ".join(SHAPES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--official-decode", type=int, default=64)
    ap.add_argument(
        "--official-prefill", type=int, default=1024,
        help="prompt tokens for the official package's prefill (without its CUDA kernels it loops over tokens)",
    )  # fmt: skip
    ap.add_argument("--prefill", type=int, default=4096)
    ap.add_argument("--ctx", type=int, default=4096, help="training context")
    ap.add_argument("--train-batch", type=int, default=1)
    ap.add_argument("--memory-chunk", type=int, default=4096)
    ap.add_argument(
        "--memory-lengths", default="25000,50000,100000", help="prompt lengths for the memory run"
    )
    ap.add_argument("--no-official", dest="official", action="store_false")
    ap.add_argument(
        "--official-cuda", action="store_true", help="also with RWKV_CUDA_ON=1 (compiles with nvcc)"
    )
    ap.add_argument("--official-timeout", type=float, default=240.0)
    ap.add_argument("--no-fla", dest="fla", action="store_false")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script")
    args = ap.parse_args()
    budget = Budget(args.budget)
    if args.smoke:
        device, shapes = torch.device("cpu"), SMOKE
        args.prefill, args.ctx, args.decode_steps, args.rounds, args.memory_chunk = 64, 64, 4, 1, 32
        args.official_decode, args.official_prefill = 4, 32
        args.memory_lengths, args.fla = "100,200,400", False
        lengths_note = "smoke"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks/gpu.py needs a CUDA GPU (or --smoke to check the script on the CPU)")
        device = torch.device("cuda")
        shapes = {n: SHAPES[n] for n in args.shapes.split(",")}
        lengths_note = "full"
    results: dict[str, Any] = {"machine": machine(device), "args": {k: str(v) for k, v in vars(args).items()}}
    results["mode"], results["shapes"] = lengths_note, {}
    for name, (version, config) in shapes.items():
        print(f"{name} ({budget.left():.0f} s left)", flush=True)
        results["shapes"][name] = run_shape(name, version, config, device, args, budget)
        if args.json:  # after every shape: a run cut short keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
