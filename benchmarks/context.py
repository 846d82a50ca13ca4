"""Decode time per token and peak memory against context position: RWKV-4 vs a transformer.

Both models are random and 169M-shaped: RWKV-4 (12 x 768, ffn 3072, vocab 50277) through
``rwkvkit.load_model`` (fp32), and transformers' GPT-NeoX with Pythia-160M's shape (12 x 768,
12 heads, vocab 50304) with a KV cache. Every (model, position) runs in a fresh process, so its
peak resident memory (ru_maxrss) is its own.

How position P is reached:
- RWKV: the decode step reads a fixed-size state (5 x 12 x 768 floats, 184 KB) and runs a fixed
  list of dense operations; the position enters only through the state's values. ``real`` rows
  prefill P random tokens first (affordable up to a few thousand tokens here); ``constructed`` rows
  use a state of the same shape filled with random values of a run's magnitudes (RWKV's step has
  no branch on them). Rows of both kinds at the same P show whether the values matter.
- Transformer: a decode step attends over all P cached keys and values; its cost depends on P,
  not on their values, so the cache is filled with random K/V of length P (prefilling 100k tokens
  through attention would take hours here). Positions whose cache does not fit in half the
  available memory are skipped and reported as such.

    python benchmarks/context.py --json benchmarks/results/context.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout's rwkvkit, not an installed copy
from rwkvkit.bench import WORKDIR  # noqa: E402  (imports no torch: the parent process stays small)
from rwkvkit.fileio import write_json  # noqa: E402

RWKV_SHAPE = dict(vocab_size=50277, n_layer=12, n_embd=768, ffn_dim=3072)
NEOX = dict(
    vocab_size=50304,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    rotary_pct=0.25,
    use_parallel_residual=True,
)


def rss_peak_mb() -> float:
    # VmHWM, not ru_maxrss: ru_maxrss can carry a forking parent's peak across exec.
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def time_steps(step, tokens: int) -> list[float]:
    step()  # warm-up
    times = []
    for _ in range(tokens):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def rwkv_state_at(model, position: int, mode: str):
    import torch

    with torch.inference_mode():
        if mode == "real":
            g = torch.Generator().manual_seed(0)
            prompt = torch.randint(0, RWKV_SHAPE["vocab_size"], (1, position), generator=g)
            _, state = model(prompt, last_only=True)
            return state
        state = model.initial_state(1)
        g = torch.Generator().manual_seed(0)  # same values at every position but the sums' size
        for t in (state.att_x_prev, state.ffn_x_prev, state.wkv_num):
            t.copy_(torch.randn(t.shape, generator=g))
        state.wkv_den.copy_(1 + torch.rand(state.wkv_den.shape, generator=g) * position**0.5)
        state.wkv_max.copy_(torch.randn(state.wkv_max.shape, generator=g) * 5)
        return state


def neox_model(max_position: int):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(**NEOX, max_position_embeddings=max(2048, 2 * max_position + 64))
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(config).eval()


def neox_cache_at(model, position: int):
    import torch
    from transformers import DynamicCache

    config = model.config
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    cache = DynamicCache(config=config)
    g = torch.Generator().manual_seed(0)
    for layer in range(config.num_hidden_layers):
        k = torch.randn(1, heads, position, head_dim, generator=g)
        v = torch.randn(1, heads, position, head_dim, generator=g)
        cache.update(k, v, layer)
        del k, v
    return cache


def rwkv_stepper(model, state):
    import torch

    box = [state, torch.tensor([[1]])]

    def step() -> None:
        with torch.inference_mode():
            logits, box[0] = model(box[1], box[0])
        box[1] = logits[:, -1].argmax(-1, keepdim=True)

    return step, box


def neox_stepper(model, cache, position: int):
    import torch

    box = [cache, torch.tensor([[1]]), position]

    def step() -> None:
        p = box[2]
        with torch.inference_mode():
            out = model(
                input_ids=box[1],
                past_key_values=box[0],
                position_ids=torch.tensor([[p]]),
                cache_position=torch.tensor([p]),
                use_cache=True,
            )
        # Keep the cache at length P (drop the token just added) so every round measures position P.
        box[0].crop(-1)
        box[1] = out.logits[:, -1].argmax(-1, keepdim=True)

    return step


def worker_interleaved(kind: str, positions: list[int], rounds: int, workdir: Path) -> dict:
    """Time per token at every position in one process, positions interleaved round by round."""
    import rwkvkit
    from rwkvkit.bench.contenders import random_checkpoint
    from rwkvkit.bench.timing import interleaved

    tasks = {}
    if kind == "rwkv":
        model = rwkvkit.load_model(random_checkpoint("169m", workdir))
        for p in positions:
            tasks[p] = rwkv_stepper(model, rwkv_state_at(model, p, "constructed"))[0]
        # An A/A control: the first position again, as a separate task. How far its median lands
        # from the first one's is the noise floor of this run.
        tasks[f"{positions[0]}-again"] = rwkv_stepper(
            model, rwkv_state_at(model, positions[0], "constructed")
        )[0]
    else:
        model = neox_model(max(positions))
        for p in positions:
            tasks[p] = neox_stepper(model, neox_cache_at(model, p), p)

    def timed(step):
        def run() -> float:
            t = time.perf_counter()
            step()
            return time.perf_counter() - t

        return run

    if kind == "rwkv":  # its steps are cheap and the same at every position: afford more rounds
        rounds = max(rounds, 25)
    res = interleaved({str(p): timed(s) for p, s in tasks.items()}, rounds)
    return {p: {"times": v} for p, v in res.items()}


def worker_rwkv(position: int, mode: str, tokens: int, workdir: Path) -> dict:
    import rwkvkit
    from rwkvkit.bench.contenders import random_checkpoint

    model = rwkvkit.load_model(random_checkpoint("169m", workdir))
    step, box = rwkv_stepper(model, rwkv_state_at(model, position, mode))
    times = time_steps(step, tokens)
    state_bytes = sum(t.numel() * t.element_size() for t in box[0].tensors().values())
    return {"times": times, "peak_rss_mb": rss_peak_mb(), "state_or_cache_mb": state_bytes / 2**20}


def worker_neox(position: int, tokens: int) -> dict:
    model = neox_model(position)
    config = model.config
    step = neox_stepper(model, neox_cache_at(model, position), position)
    times = time_steps(step, tokens)
    kv_bytes = 2 * config.num_hidden_layers * position * config.hidden_size * 4
    return {"times": times, "peak_rss_mb": rss_peak_mb(), "state_or_cache_mb": kv_bytes / 2**20}


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) / 1024
    return float("inf")


def run_worker(args: list[str], threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *args, "--threads", str(threads)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1]
            if proc.stderr.strip()
            else f"exit {proc.returncode}"
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def attach_interleaved(rows: list[dict], interleaved_ms: dict[str, dict[str, float]]) -> None:
    for r in rows:
        kind = "rwkv" if r["model"].startswith("RWKV") else "neox"
        if r["how"] != "real" and str(r["position"]) in interleaved_ms.get(kind, {}):
            r["ms_per_token_interleaved"] = interleaved_ms[kind][str(r["position"])]


def aa_control(interleaved_ms: dict[str, dict[str, float]], positions: list[int]) -> dict | None:
    rw = interleaved_ms.get("rwkv", {})
    a, b = rw.get(str(positions[0])), rw.get(f"{positions[0]}-again")
    if a is None or b is None:
        return None
    return {"position": positions[0], "ms_a": a, "ms_b": b, "relative_difference": abs(a - b) / min(a, b)}


def rwkv_time_only(args: argparse.Namespace) -> int:
    """Redo RWKV's interleaved timing alone (a minute, not the transformer's long rows)."""
    from rwkvkit.bench.machine import machine_info

    positions = [int(x) for x in args.positions.split(",")]
    res = run_worker(["time-rwkv", *map(str, positions), "--rounds", str(args.rounds)], args.threads)
    if "error" in res:
        raise SystemExit(res["error"])
    ms = {"rwkv": {p: 1e3 * statistics.median(v["times"]) for p, v in res.items()}}
    print(f"interleaved rwkv ms/token: {ms['rwkv']}")
    if args.json and Path(args.json).exists():
        result = json.loads(Path(args.json).read_text())
        attach_interleaved([r for r in result["rows"] if r["model"].startswith("RWKV")], ms)
        result["rwkv_aa"] = aa_control(ms, positions)
        result["rwkv_time_rerun_machine"] = machine_info(args.threads)
        write_json(args.json, result)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--positions", default="1000,10000,100000,1000000")
    p.add_argument("--real-up-to", type=int, default=1000, help="prefill for real up to this position")
    p.add_argument("--tokens", type=int, default=8, help="decode steps timed per row")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds for the time columns")
    p.add_argument("--json", default=None)
    p.add_argument("--workdir", default=str(WORKDIR))
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    p.add_argument(
        "--rwkv-time-only",
        action="store_true",
        help="rerun only RWKV's interleaved timing (with its A/A control) and update the --json file",
    )
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        kind, position = args.worker[0], int(args.worker[1])
        if kind.startswith("time-"):
            positions = [int(x) for x in args.worker[1:]]
            print(json.dumps(worker_interleaved(kind[5:], positions, args.rounds, Path(args.workdir))))
            return 0
        if kind == "rwkv":
            out = worker_rwkv(position, args.worker[2], args.tokens, Path(args.workdir))
        else:
            out = worker_neox(position, args.tokens)
        print(json.dumps(out))
        return 0

    from rwkvkit.bench.machine import machine_info

    if args.rwkv_time_only:
        return rwkv_time_only(args)
    rows = []
    for position in [int(x) for x in args.positions.split(",")]:
        jobs = [("RWKV-4 169M (rwkvkit fp32)", ["rwkv", str(position), "constructed"])]
        if position <= args.real_up_to:
            jobs.insert(0, ("RWKV-4 169M (rwkvkit fp32)", ["rwkv", str(position), "real"]))
        kv_mb = 2 * NEOX["num_hidden_layers"] * position * NEOX["hidden_size"] * 4 / 2**20
        if kv_mb < 0.5 * mem_available_mb():
            jobs.append(("GPT-NeoX 162M (transformers fp32, KV cache)", ["neox", str(position)]))
        else:
            rows.append({"model": "GPT-NeoX 162M (transformers fp32, KV cache)", "position": position,
                         "how": "skipped", "note": f"KV cache needs {kv_mb / 1024:.1f} GiB; "
                         f"{mem_available_mb() / 1024:.1f} GiB available"})  # fmt: skip
        for name, wargs in jobs:
            res = run_worker(wargs, args.threads)
            how = wargs[2] if wargs[0] == "rwkv" else "random KV cache"
            row = {"model": name, "position": position, "how": how, **res}
            if "times" in res:
                row["ms_per_token"] = 1e3 * statistics.median(res["times"])
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "times"}), flush=True)
    # Time per token, positions interleaved in one process per model (medians of rounds): on a
    # shared machine this is what makes "flat" or "growing" visible through the noise.
    positions = [int(x) for x in args.positions.split(",")]
    neox_ok = [r["position"] for r in rows if r["model"].startswith("GPT") and "times" in r]
    interleaved_ms: dict[str, dict[str, float]] = {}
    for kind, pos in (("rwkv", positions), ("neox", neox_ok)):
        if not pos:
            continue
        res = run_worker([f"time-{kind}", *map(str, pos), "--rounds", str(args.rounds)], args.threads)
        if "error" in res:
            print(f"interleaved {kind}: {res['error']}")
            continue
        interleaved_ms[kind] = {p: 1e3 * statistics.median(v["times"]) for p, v in res.items()}
        print(f"interleaved {kind} ms/token: {interleaved_ms[kind]}", flush=True)
    attach_interleaved(rows, interleaved_ms)
    result = {
        "machine": machine_info(args.threads),
        "rows": rows,
        "rwkv_aa": aa_control(interleaved_ms, positions),
    }
    print()
    print(
        "| model | position | how | ms/token, own process | ms/token, interleaved | peak RSS MB | state / KV cache MB |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        if "ms_per_token" in r:
            inter = f"{r['ms_per_token_interleaved']:.1f}" if "ms_per_token_interleaved" in r else "-"
            print(f"| {r['model']} | {r['position']:,} | {r['how']} | {r['ms_per_token']:.1f} | {inter} | "
                  f"{r['peak_rss_mb']:.0f} | {r['state_or_cache_mb']:.2f} |")  # fmt: skip
        else:
            print(
                f"| {r['model']} | {r['position']:,} | {r['how']} | - | - | {r.get('note', r.get('error'))} |"
            )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
