"""CPU decode and prefill of every RWKV version and precision, beside llama.cpp, rwkv.cpp and the
official ``rwkv`` package (issue 12), plus the thread-count sweep, the contention run and the
bundled model's ``rwkvkit generate`` wall time. One JSON file; ``benchmarks/report.py`` makes the
BENCHMARKS.md tables from it.

Every speed table is one ``rwkvkit.bench`` run (the package behind ``rwkvkit bench``): all its
contenders loaded in this process, timed in interleaved rounds with rotating order, medians
reported; each is run at 1 and at 2 threads. The load average is recorded before every part,
since the machine this was made on is shared.

    bash benchmarks/setup.sh        # the peers (llama.cpp: ~30 min build)
    python benchmarks/cpu.py --json benchmarks/results/cpu.json
    python benchmarks/report.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout's rwkvkit, not an installed copy

from rwkvkit import load_model  # noqa: E402
from rwkvkit.bench import WORKDIR  # noqa: E402
from rwkvkit.bench.contenders import random_checkpoint  # noqa: E402
from rwkvkit.bench.machine import machine_info  # noqa: E402
from rwkvkit.bench.run import run_bench  # noqa: E402
from rwkvkit.bench.table import format_table  # noqa: E402
from rwkvkit.bench.timing import interleaved, summarize  # noqa: E402
from rwkvkit.defaults import default_model_path  # noqa: E402
from rwkvkit.fileio import write_json  # noqa: E402
from rwkvkit.inference import default_threads  # noqa: E402
from rwkvkit.ops import native  # noqa: E402

OURS = "fp32,bf16,int8,int4"
LLAMA = "llamacpp-f32,llamacpp-f16,llamacpp-q8_0,llamacpp-q4_0"
OFFICIAL = "rwkv-fp32,rwkv-bf16"
# shape -> contenders; the tables of the goals
PLAN = {
    "v7-0.1b": f"{OURS},{LLAMA},{OFFICIAL}",
    "169m": f"{OURS},rwkvcpp-fp32,rwkvcpp-fp16,{OFFICIAL}",
    "v6-0.1b": f"{OURS},{LLAMA},{OFFICIAL}",
    "v5-0.1b": f"{OURS},{OFFICIAL}",
    "v7-0.4b": f"{OURS},{LLAMA}",
}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def speed(args: argparse.Namespace, workdir: Path, save=lambda part: None) -> dict:
    out: dict = {}
    for shape in args.shapes:
        path = random_checkpoint(shape, workdir)
        for threads in args.threads:
            key = f"{shape}@{threads}"
            load = load_average()
            result = run_bench(
                path,
                PLAN.get(shape, OURS).split(","),
                threads=threads,
                rounds=args.rounds,
                decode_tokens=args.decode_tokens,
                prefill_len=args.prefill,
                batch8=True,
                workdir=workdir,
            )
            result["load_average_before"] = load
            result["load_average_after"] = load_average()
            out[key] = result
            save(out)
            print(f"\n## {key} (load {load})\n{format_table(result)}", flush=True)
    return out


def _decode_rate(model: torch.nn.Module, threads: int, tokens: int):
    """A task: ``tokens`` greedy one-token steps at ``threads`` threads; tokens per second."""
    with torch.inference_mode():
        _, state = model(torch.zeros(1, 1, dtype=torch.long))
    box = {"state": state, "tok": torch.zeros(1, dtype=torch.long)}

    def run() -> float:
        torch.set_num_threads(threads)
        t = time.perf_counter()
        with torch.inference_mode():
            for _ in range(tokens):
                logits, box["state"] = model.step(box["tok"], box["state"])
                box["tok"] = logits.argmax(-1)
        return tokens / (time.perf_counter() - t)

    return run


def thread_sweep(args: argparse.Namespace, workdir: Path) -> dict:
    """Decode (fp32, B=1) at every thread count 1..nproc, interleaved, against the default."""
    models = {"bundled": default_model_path()} | {
        s: random_checkpoint(s, workdir) for s in ("169m", "v7-0.1b")
    }
    out = {}
    counts = list(range(1, (os.cpu_count() or 1) + 1))
    for name, path in models.items():
        if path is None:
            continue
        model = load_model(path)
        tokens = 64 if name == "bundled" else args.decode_tokens
        load = load_average()
        res = summarize(interleaved({str(n): _decode_rate(model, n, tokens) for n in counts}, args.rounds))
        best = max(counts, key=lambda n: res[str(n)]["median"])
        chosen = default_threads(model)
        out[name] = {
            "tok_s": res,
            "default_threads": chosen,
            "best_threads": best,
            "default_vs_best": res[str(chosen)]["median"] / res[str(best)]["median"],
            "load_average_before": load,
        }
        print(f"threads {name}: {out[name]}", flush=True)
        del model
    return out


def agreement(args: argparse.Namespace, workdir: Path) -> dict:
    """RWKV-7 0.1B shape, fp32: the logits of a 32-token prompt (every position) from llama.cpp
    (f32 GGUF) and from rwkvkit, each against the official package's; max absolute difference."""
    import llama_cpp  # type: ignore[import-not-found]
    import numpy as np

    from rwkvkit.bench.peers import _official_rwkv_class, gguf_file

    path = random_checkpoint("v7-0.1b", workdir)
    tokens = torch.randint(0, 65536, (32,), generator=torch.Generator().manual_seed(5)).tolist()
    official = _official_rwkv_class("7")(str(path.with_suffix("")), "cpu fp32")
    with torch.inference_mode():
        state, rows = None, []
        for t in tokens:
            out, state = official.forward([t], state)
            rows.append(out.float())
        ref = torch.stack(rows)
        ours, _ = load_model(path)(torch.tensor([tokens]))
    llm = llama_cpp.Llama(str(gguf_file(path, workdir, "f32")), n_ctx=64, logits_all=True, verbose=False)
    try:
        llm.eval(tokens)
        theirs = torch.from_numpy(np.array(llm.scores[: len(tokens)], dtype=np.float32))
    finally:
        llm.close()
    out = {
        "prompt_tokens": len(tokens),
        "logit_magnitude": ref.abs().max().item(),
        "rwkvkit_fp32_vs_official_fp32": (ours[0] - ref).abs().max().item(),
        "llama_cpp_f32_vs_official_fp32": (theirs - ref).abs().max().item(),
    }
    print(f"agreement: {out}", flush=True)
    return out


BUSY = "import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"


def contention(args: argparse.Namespace, workdir: Path) -> dict:
    """Decode at the default thread count, alone and beside a busy loop (another process spinning on
    one core), in alternating rounds: the speed kept under contention."""
    out = {}
    for name, path in (("bundled", default_model_path()), ("v7-0.1b", random_checkpoint("v7-0.1b", workdir))):
        if path is None:
            continue
        model = load_model(path)
        threads = default_threads(model)
        tokens = 64 if name == "bundled" else args.decode_tokens
        task = _decode_rate(model, threads, tokens)
        task()  # warm-up
        quiet, busy = [], []
        for _ in range(args.rounds):
            quiet.append(task())
            spinner = subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=120)])
            try:
                time.sleep(0.5)  # let it reach its core
                busy.append(task())
            finally:
                spinner.kill()
                spinner.wait()
        q, b = statistics.median(quiet), statistics.median(busy)
        out[name] = {"threads": threads, "quiet_tok_s": q, "busy_tok_s": b, "kept": b / q,
                     "load_average": load_average()}  # fmt: skip
        print(f"contention {name}: {out[name]}", flush=True)
        del model
    return out


def generate_wall(args: argparse.Namespace) -> dict:
    """``rwkvkit generate --max-tokens 100`` with the bundled model: wall seconds, start-up included."""
    if default_model_path() is None:
        return {}
    cmd = [
        sys.executable,
        "-m",
        "rwkvkit",
        "generate",
        "--prompt",
        "ROMEO:",
        "--max-tokens",
        "100",
        "--seed",
        "0",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    floor = [sys.executable, "-c", "import torch"]  # what every start-up pays before rwkvkit runs
    walls: dict[str, list[float]] = {"generate": [], "import torch": []}
    for _ in range(args.rounds):
        for name, c in (("generate", cmd), ("import torch", floor)):
            t = time.perf_counter()
            subprocess.run(c, env=env, capture_output=True, check=True)
            walls[name].append(time.perf_counter() - t)
    g = walls["generate"]
    out = {"median_s": statistics.median(g), "min_s": min(g), "max_s": max(g), "command": cmd[1:],
           "import_torch_median_s": statistics.median(walls["import torch"]), "load_average": load_average()}  # fmt: skip
    print(f"generate: {out}", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--shapes", nargs="+", default=list(PLAN), choices=[*PLAN, "tiny", "v7-tiny"]
    )  # tiny: a smoke run
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--prefill", type=int, default=128)
    p.add_argument("--parts", nargs="+", default=["speed", "threads", "contention", "generate", "agreement"])
    p.add_argument("--workdir", default=str(WORKDIR))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if native.load(wait=True) is None:
        print("note: the native kernels are unavailable here; rwkvkit runs its portable kernels", flush=True)
    workdir = Path(args.workdir)
    result: dict = {"machine": machine_info(max(args.threads)), "load_average_at_start": load_average()}
    parts = {"speed": speed, "threads": thread_sweep, "contention": contention, "agreement": agreement}

    def save(
        part: str, value: dict
    ) -> None:  # after every part (and speed run): a stopped run keeps its results
        result[part] = value
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            write_json(args.json, result)

    for part in args.parts:
        if part == "generate":
            save(part, generate_wall(args))
        elif part == "speed":
            save(part, speed(args, workdir, lambda runs: save("speed", runs)))
        else:
            save(part, parts[part](args, workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
