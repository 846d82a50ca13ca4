"""One-token decode speed of every RWKV version (4, 5, 6, 7), batch 1 and batch 8, fp32 and bf16.

Random weights (``rwkvkit.testing``) in the shapes of small released models: RWKV-4 in the 169M
Pile shape (L12 C768 F3072, vocab 50277), RWKV-5/6/7 at the comparable 0.1B World shape (L12 C768,
vocab 65536, head size 64; F 2688 for 5/6, 3072 for 7). Each model is saved to a temporary
checkpoint and loaded with ``rwkvkit.load_model`` (what users get), then decodes greedily with
``logits, state = model(tokens[:, None], state)``: the call every rwkvkit version has, so this
script measures older checkouts too: the rwkvkit on PYTHONPATH, and with ``--baseline DIR`` another
checkout's beside it in the same process. One version at a time, every contender of it (package,
dtype, batch) is in memory and they take turns: each round times a block of steps of each in a
rotating order, so load from other work on the machine hits all alike. A round's figure is the
median step; the table gives the median round, the min-max, and the ratio to the baseline.
Read ratios within about +-10% as equal: two copies of the same model loaded in one process decoded
up to 10% apart here (RWKV-4 bf16, B=1), from where their weights landed in memory alone.

    git worktree add /tmp/before a73bc13      # the commit to compare with
    PYTHONPATH=$PWD python benchmarks/decode.py --baseline /tmp/before --json benchmarks/results/decode.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(1, str(Path(__file__).resolve().parent))  # _machine.py beside this file

from _machine import machine

import rwkvkit  # the checkout on PYTHONPATH
from rwkvkit import testing
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODELS = {
    "4": (RWKV4Config(vocab_size=50277, n_layer=12, n_embd=768, ffn_dim=3072), testing.random_rwkv4_state_dict),
    "5": (RWKV5Config(vocab_size=65536, n_layer=12, n_embd=768, ffn_dim=2688), testing.random_rwkv5_state_dict),
    "6": (RWKV6Config(vocab_size=65536, n_layer=12, n_embd=768, ffn_dim=2688), testing.random_rwkv6_state_dict),
    "7": (RWKV7Config(vocab_size=65536, n_layer=12, n_embd=768, ffn_dim=3072), testing.random_rwkv7_state_dict),
}  # fmt: skip


class Contender:
    """One loaded model decoding one batch of sequences, a block of steps at a time."""

    def __init__(self, name: str, model: torch.nn.Module, batch: int, prompt_len: int) -> None:
        self.name, self.model, self.batch = name, model, batch
        gen = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, 256, (batch, prompt_len), generator=gen)
        with torch.inference_mode():
            logits, self.state = model(prompt)
        self.tokens = logits[:, -1].argmax(-1)  # (B,)
        self.rounds: list[float] = []  # median seconds per step, one per round

    def run(self, steps: int, record: bool) -> None:
        times = []
        with torch.inference_mode():
            for _ in range(steps):
                t0 = time.perf_counter()
                logits, self.state = self.model(self.tokens[:, None], self.state)
                self.tokens = logits[:, -1].argmax(-1)
                times.append(time.perf_counter() - t0)
        if record:
            self.rounds.append(statistics.median(times))


def load_baseline(checkout: Path) -> ModuleType:
    """Another checkout's rwkvkit, imported as the package ``rwkvkit_baseline`` beside this one, so
    both run in this process in interleaved rounds (its modules import each other relatively)."""
    spec = importlib.util.spec_from_file_location(
        "rwkvkit_baseline",
        checkout / "rwkvkit" / "__init__.py",
        submodule_search_locations=[str(checkout / "rwkvkit")],
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"no rwkvkit package under {checkout}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["rwkvkit_baseline"] = module
    spec.loader.exec_module(module)
    return module


def measure(contenders: list[Contender], threads: int, rounds: int, steps: int) -> None:
    """Interleaved rounds at one thread count: each round runs every contender, in rotating order."""
    torch.set_num_threads(threads)
    for c in contenders:
        c.rounds = []
        c.run(2, record=False)  # warm up at this thread count
    for r in range(rounds):
        for c in contenders[r % len(contenders) :] + contenders[: r % len(contenders)]:
            c.run(steps, record=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--versions", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=12, help="decode steps per contender per round")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens before decoding starts")
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (e.g. a git worktree of an older commit) timed beside this one, same process",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()

    impls = {"rwkvkit": rwkvkit}
    if args.baseline is not None:
        impls["baseline"] = load_baseline(args.baseline.resolve())
    header = f"{machine()}; measured at {args.threads} thread(s)"
    where = {name: str(Path(m.__file__).parent) for name, m in impls.items()}
    print(f"{where}; {header}")
    result: dict = {
        "rwkvkit": where,
        "machine": header,
        "load_average_at_start": os.getloadavg(),
        "command": " ".join(sys.argv),
        "decode_tok_s": {},
    }
    # One version at a time (its models for every impl and dtype in memory together), every thread count.
    with tempfile.TemporaryDirectory() as tmp:
        for version in args.versions:
            config, make_sd = MODELS[version]
            path = Path(tmp) / f"rwkv{version}.pth"
            torch.save(make_sd(config, seed=0), path)
            contenders = []
            for impl, package in impls.items():
                for dname in args.dtypes:
                    model = package.load_model(path, dtype=DTYPES[dname])
                    for batch in args.batches:
                        name = f"RWKV-{version} {dname} B={batch} {impl}"
                        contenders.append(Contender(name, model, batch, args.prompt))
            path.unlink()
            for threads in args.threads:
                measure(contenders, threads, args.rounds, args.steps)
                for c in contenders:
                    tok_s = sorted(c.batch / t for t in c.rounds)
                    result["decode_tok_s"][f"{c.name}, {threads} thread(s)"] = {
                        "median": statistics.median(tok_s),
                        "min": tok_s[0],
                        "max": tok_s[-1],
                        "rounds": len(tok_s),
                    }
            del contenders
    result["load_average_at_end"] = os.getloadavg()

    rows = result["decode_tok_s"]
    compare = "baseline" in impls
    print(
        "| model | threads | rwkvkit tok/s (median, min-max) |"
        + (" baseline tok/s | rwkvkit / baseline |" if compare else "")
    )
    print("|---|---|---|" + ("---|---|" if compare else ""))
    for key, s in rows.items():
        name, threads = key.rsplit(", ", 1)
        label, impl = name.rsplit(" ", 1)
        if impl != "rwkvkit":
            continue
        line = f"| {label} | {threads.split()[0]} | {s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f}) |"
        if compare:
            b = rows[f"{label} baseline, {threads}"]
            line += f" {b['median']:.1f} ({b['min']:.1f}-{b['max']:.1f}) | {s['median'] / b['median']:.2f}x |"
        print(line)
    print(f"load average at start {result['load_average_at_start']}, at end {result['load_average_at_end']}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = out.with_suffix(".tmp")
        tmp_path.write_text(json.dumps(result, indent=2) + "\n")
        tmp_path.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
