"""Write BENCHMARKS.md and the PNG plots from the JSON files the other scripts wrote.

    python benchmarks/report.py            # reads benchmarks/results/*.json

Every table names the machine, the versions and the command that produced it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PLOTS = ROOT / "benchmarks" / "plots"
sys.path.insert(0, str(ROOT))
from rwkvkit.bench.machine import machine_line  # noqa: E402  (imports no torch)


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def speed_section(res: dict, shape: str) -> list[str]:
    out = [f"### {shape}: decode and prefill, random weights", "", machine_line(res["machine"]), ""]
    dec = res["decode_tok_s"]
    ref_names = ("rwkv.cpp fp32, B=1", "rwkv.cpp fp16, B=1", "rwkv cpu fp32, B=1")
    refs = {n: dec[n]["median"] for n in ref_names if n in dec}
    head = "| decode | tokens/s (median of rounds) | min - max |" + "".join(f" vs {n[:-5]} |" for n in refs)
    out += [head, "|---|---:|---:|" + "---:|" * len(refs)]
    for name, s in dec.items():
        ratios = "".join(f" {s['median'] / r:.2f}x |" for r in refs.values())
        out.append(f"| {name} | {s['median']:.1f} | {s['min']:.1f} - {s['max']:.1f} |{ratios}")
    pre = res.get("prefill_tok_s") or {}
    if pre:
        peak = res.get("matmul_peak_gflops", {})
        gflop = res.get("prefill_matmul_gflop")
        off = {k: pre[k]["median"] for k in ("rwkv cpu fp32", "rwkv cpu bf16") if k in pre}
        out += ["", f"| prefill, {res['prefill_len']} tokens | tokens/s | min - max | matmul GFLOP/s |"
                + "".join(f" vs {k} |" for k in off), "|---|---:|---:|---:|" + "---:|" * len(off)]  # fmt: skip
        for name, s in pre.items():
            g = f"{gflop * s['median'] / res['prefill_len']:.1f}" if gflop else "-"
            ratios = "".join(f" {s['median'] / r:.2f}x |" for r in off.values())
            out.append(f"| {name} | {s['median']:.1f} | {s['min']:.1f} - {s['max']:.1f} | {g} |{ratios}")
        if peak:
            out += ["", f"Matmul peak measured in the same run (prefill-shaped `F.linear`): fp32 "
                    f"{peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s. Prefill rows count "
                    "only the block matrices' work (the WKV and elementwise work come on top)."]  # fmt: skip
    for note in res.get("notes", []):
        out += ["", f"Note: {note}"]
    return out


def plot_speed(results: dict[str, dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for key, title in (
        ("decode_tok_s", "decode, batch 1 (tokens/s)"),
        ("prefill_tok_s", "prefill (tokens/s)"),
    ):
        fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
        for ax, (shape, res) in zip(axes[0], results.items(), strict=True):
            rows = {k: v for k, v in res[key].items() if "B=8" not in k}
            names = [k.replace(", B=1", "") for k in rows]
            vals = [v["median"] for v in rows.values()]
            errs = [
                [v["median"] - v["min"] for v in rows.values()],
                [v["max"] - v["median"] for v in rows.values()],
            ]
            colors = ["tab:blue" if n.startswith("rwkvkit") else "tab:gray" for n in names]
            ax.barh(names, vals, xerr=errs, color=colors)
            ax.invert_yaxis()
            ax.set_title(f"{shape} random RWKV-4: {title}")
            ax.set_xlabel("tokens/s (median; bars: min-max of rounds)")
        fig.tight_layout()
        name = f"{key.split('_')[0]}.png"
        PLOTS.mkdir(parents=True, exist_ok=True)
        fig.savefig(PLOTS / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def context_section(res: dict) -> list[str]:
    out = ["### Decode cost against context position: RWKV-4 vs a transformer with a KV cache", "",
           machine_line(res["machine"]), "",
           "| model | position | how the position is reached | ms/token, own process | ms/token, positions interleaved | peak RSS (MB) | state / KV cache (MB) |",
           "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in res["rows"]:
        if "ms_per_token" in r:
            inter = f"{r['ms_per_token_interleaved']:.1f}" if "ms_per_token_interleaved" in r else "-"
            out.append(f"| {r['model']} | {r['position']:,} | {r['how']} | {r['ms_per_token']:.1f} | {inter} | "
                       f"{r['peak_rss_mb']:.0f} | {r['state_or_cache_mb']:.2f} |")  # fmt: skip
        else:
            out.append(
                f"| {r['model']} | {r['position']:,} | {r['how']} | - | - | - | {r.get('note') or r.get('error')} |"
            )
    out += ["", "Own process: each row measured in a fresh process, one after another (peak RSS is that "
            "process's). Interleaved: one process per model holding every position's state or cache, "
            "one step at each position per round, median of rounds; the time plot and the growth goal "
            "use these, since on a shared machine rows measured minutes apart differ by the load."]  # fmt: skip
    aa = res.get("rwkv_aa")
    if aa:
        out += ["", f"Noise floor (A/A control): the same {aa['position']:,}-token state measured twice as two "
                f"tasks in RWKV's interleaved run gave {aa['ms_a']:.1f} and {aa['ms_b']:.1f} ms/token, "
                f"{aa['relative_difference']:.0%} apart; differences between positions below that are noise."]  # fmt: skip
    if res.get("rwkv_time_rerun_machine"):
        out += ["", "RWKV's interleaved column comes from a later rerun (`--rwkv-time-only`): "
                + machine_line(res["rwkv_time_rerun_machine"])]  # fmt: skip
    return out


def plot_context(res: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    models = sorted({r["model"] for r in res["rows"]})
    for model in models:
        rows = [r for r in res["rows"] if r["model"] == model and "ms_per_token" in r and r["how"] != "real"]
        if not rows:
            continue
        x = [r["position"] for r in rows]
        a1.plot(x, [r.get("ms_per_token_interleaved", r["ms_per_token"]) for r in rows], "o-", label=model)
        a2.plot(x, [r["peak_rss_mb"] for r in rows], "o-", label=model)
    for ax, ylabel in ((a1, "decode ms/token (median)"), (a2, "peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("context position (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    a1.set_title("time per generated token")
    a2.set_title("peak memory")
    fig.tight_layout()
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOTS / "context.png", dpi=110)
    plt.close(fig)
    return "context.png"


def gguf_tables(results: dict) -> list[str]:
    """The per-type and the official/onnxruntime tables (gguf_agreement.py prints them too)."""
    lines = ["| version | file type | rwkvkit on our file vs original | rwkvkit on llama.cpp's file vs original | "
             "llama.cpp on our file vs on its own | llama.cpp vs rwkvkit, same file | llama.cpp vs original |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for version, r in results["versions"].items():
        for t, d in r["types"].items():
            lines.append(f"| RWKV-{version} | {t} | {d['rwkvkit_our_file_vs_original']:.2e} | "
                         f"{d['rwkvkit_llama_file_vs_original']:.2e} | {d['llama_our_file_vs_llama_own_file']:.2e} | "
                         f"{d['llama_vs_rwkvkit_same_file']:.2e} | {d['llama_vs_original']:.2e} |")  # fmt: skip
    lines += ["", "| version | rwkvkit vs official | llama.cpp f32 vs official | onnxruntime vs rwkvkit (logits / state) "
              "| rwkvkit step vs forward | logits std |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for version, r in results["versions"].items():
        onnx = (f"{r['onnxruntime_vs_rwkvkit_logits']:.2e} / {r['onnxruntime_vs_rwkvkit_state']:.2e}"
                if "onnxruntime_vs_rwkvkit_logits" in r else "-")  # fmt: skip
        own = f"{r['rwkvkit_step_vs_forward']:.2e}" if "rwkvkit_step_vs_forward" in r else "-"
        lines.append(f"| RWKV-{version} | {r['rwkvkit_vs_official']:.2e} | {r['llama_f32_vs_official']:.2e} | "
                     f"{onnx} | {own} | {r['logits_std']:.2f} |")  # fmt: skip
    if "peers" in results:
        lines += ["", "Peers: " + ", ".join(f"{k} {v}" for k, v in results["peers"].items()) + "."]
    return lines


def gguf_section(res: dict) -> list[str]:
    """benchmarks/gguf_agreement.py's tables: GGUF files both ways against llama.cpp, per type."""
    return ["### GGUF (llama.cpp) and ONNX (onnxruntime), the 0.1B shape", "", machine_line(res["machine"]), "",
            f"Random weights, {res['tokens']} tokens in one call; max |logit difference| over every position "
            "(`python benchmarks/gguf_agreement.py`, whose docstring says what each column compares):", "",
            *gguf_tables(res)]  # fmt: skip


def goal_rows(speeds: dict[str, dict], context: dict | None) -> list[str]:
    """Each goal of the issue, with the ratio reached in these runs (computed, not typed in)."""
    out = ["| goal | target | reached | met |", "|---|---:|---:|---|"]

    def add(goal: str, target: float, value: float | None, fmt: str = "{:.2f}x") -> None:
        if value is None:
            out.append(f"| {goal} | {fmt.format(target)} | not measured | - |")
        else:
            out.append(
                f"| {goal} | {fmt.format(target)} | {fmt.format(value)} | {'yes' if value >= target else 'no'} |"
            )

    for shape, res in speeds.items():
        d = {k: v["median"] for k, v in res["decode_tok_s"].items()}
        p = {k: v["median"] for k, v in res.get("prefill_tok_s", {}).items()}

        def ratio(a: str, b: str, table: dict[str, float]) -> float | None:
            return table[a] / table[b] if a in table and b in table else None

        add(f"{shape} decode fp32 vs rwkv.cpp fp32", 1.1, ratio("rwkvkit fp32, B=1", "rwkv.cpp fp32, B=1", d))
        add(f"{shape} decode bf16 vs rwkv.cpp fp16", 1.0, ratio("rwkvkit bf16, B=1", "rwkv.cpp fp16, B=1", d))
        add(f"{shape} decode fp16 vs rwkv.cpp fp16", 1.0, ratio("rwkvkit fp16, B=1", "rwkv.cpp fp16, B=1", d))
        add(f"{shape} decode int8 vs rwkv.cpp fp16", 1.5, ratio("rwkvkit int8, B=1", "rwkv.cpp fp16, B=1", d))
        for v in ("fp32", "bf16", "int8"):
            add(f"{shape} batched decode {v}: B=8 vs B=1 aggregate", 4.0,
                ratio(f"rwkvkit {v}, B=8", f"rwkvkit {v}, B=1", d))  # fmt: skip
        add(f"{shape} prefill fp32 vs official fp32", 1.0, ratio("rwkvkit fp32", "rwkv cpu fp32", p))
        add(f"{shape} prefill bf16 vs official bf16", 1.2, ratio("rwkvkit bf16", "rwkv cpu bf16", p))
        peak, gflop = res.get("matmul_peak_gflops"), res.get("prefill_matmul_gflop")
        if peak and gflop and "rwkvkit fp32" in p:
            frac = gflop * p["rwkvkit fp32"] / res["prefill_len"] / peak["fp32"]
            add(f"{shape} prefill fp32, fraction of matmul peak", 0.85, frac, "{:.0%}")
    if context:
        for model in sorted({r["model"] for r in context["rows"]}):
            rows = [r for r in context["rows"] if r["model"] == model and "ms_per_token_interleaved" in r]
            if model.startswith("RWKV") and len(rows) > 1:
                lo = min(rows, key=lambda r: r["position"])
                hi = max(rows, key=lambda r: r["position"])
                span = f"{lo['position']:,} -> {hi['position']:,}"
                growth_t = hi["ms_per_token_interleaved"] / lo["ms_per_token_interleaved"] - 1
                growth_m = hi["peak_rss_mb"] / lo["peak_rss_mb"] - 1
                out.append(f"| RWKV decode time growth, position {span} | <= +5% | {growth_t:+.1%} | "
                           f"{'yes' if growth_t <= 0.05 else 'no (noise? see table)'} |")  # fmt: skip
                out.append(f"| RWKV peak memory growth, position {span} | <= +5% | {growth_m:+.1%} | "
                           f"{'yes' if growth_m <= 0.05 else 'no'} |")  # fmt: skip
    return out


def serve_throughput(res: dict) -> list[str]:
    """One run's aggregate tokens/s against concurrent clients."""
    from statistics import median

    tput = {int(c): v for c, v in res["throughput"].items()}
    a = res["args"]
    out = [f"Throughput, {a['dtype']} weights: each client sends {a['requests']} completions of {a['tokens']} tokens "
           "one after another (sampled, the end-of-text token banned so every row runs its length); "
           f"{a['rounds']} rounds with the client counts in rotating order; median (min-max). "
           + machine_line(res["machine"]) + load_note(res), "",
           "| clients | generated tokens/s, all clients | vs 1 client |", "|---:|---:|---:|"]  # fmt: skip
    base = median(tput[min(tput)])
    for c, v in sorted(tput.items()):
        out.append(f"| {c} | {median(v):.1f} ({min(v):.1f}-{max(v):.1f}) | {median(v) / base:.2f}x |")
    return [*out, ""]


def load_note(res: dict) -> str:
    load = res.get("load_average_at_end")
    return f" Load average (1 min) at the end {load[0]:.1f}." if load else ""


def serve_section(runs: list[dict]) -> list[str]:
    """benchmarks/serve.py's runs (one per dtype): throughput against concurrent clients, and chat
    turns' first tokens with and without the cache."""
    from statistics import median

    goals, out = [], []
    for res in runs:
        tput = {int(c): v for c, v in res.get("throughput", {}).items()}
        if 1 in tput and 8 in tput:
            ratio = median(tput[8]) / median(tput[1])
            goals.append(f"| aggregate tokens/s, 8 clients vs 1 ({res['args']['dtype']}) | >= 4x | {ratio:.2f}x | "
                         f"{'yes' if ratio >= 4 else 'no'} |")  # fmt: skip
        if tput:
            out += serve_throughput(res)
    for res in runs:
        turns, a = res.get("turns"), res["args"]
        if not turns:
            continue
        if len(turns["cache"]) >= 20:
            t = [median(x[0] for x in turn) for turn in turns["cache"]]
            u = [median(x[0] for x in turn) for turn in turns["no cache"]]
            goals.append(f"| with the cache, first token of turn 20 vs turn 2 | <= 1.5x | {t[19] / t[1]:.2f}x | "
                         f"{'yes' if t[19] / t[1] <= 1.5 else 'no'} |")  # fmt: skip
            goals.append(f"| without it, turn 20 vs turn 2 (grows with the conversation) | > 1.5x | "
                         f"{u[19] / u[1]:.2f}x | {'yes' if u[19] / u[1] > 1.5 else 'no'} |")  # fmt: skip
        n = len(turns["cache"][0])
        out += [f"Chat turns, {a['dtype']} weights: {n} conversation(s) per server, each user message "
                f"{a['user_words']} words, each reply at most {a['reply_tokens']} tokens; the whole conversation is "
                "sent every turn (as the OpenAI API does); the two servers' turns alternate. Medians over the "
                "conversations. " + machine_line(res["machine"]) + load_note(res), "",
                "| turn | prompt tokens | cached tokens | first token, cache (s) | first token, no cache (s) |",
                "|---:|---:|---:|---:|---:|"]  # fmt: skip
        for k, (hit, cold) in enumerate(zip(turns["cache"], turns["no cache"], strict=True), 1):
            out.append(f"| {k} | {median(x[1] for x in hit):.0f} | {median(x[2] for x in hit):.0f} | "
                       f"{median(x[0] for x in hit):.3f} | {median(x[0] for x in cold):.3f} |")  # fmt: skip
        out.append("")
    head = ["| goal | target | measured | met |", "|---|---:|---:|---|", *goals, ""] if goals else []
    if goals:
        head += ["The server batches no better than one model call does: compare the batched-decode goals "
                 "(B=8 vs B=1, engine alone) at the top of this file.", ""]  # fmt: skip
    return head + out


def _tok_s(x: dict | None, key: str = "median") -> float | None:
    """The tokens/s of one measurement, None when it was skipped or failed."""
    if not isinstance(x, dict):
        return None
    return x.get(key) if key in x else x.get("tok_s")


def _cell(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def gpu_section(res: dict | None) -> list[str]:
    """benchmarks/gpu.py's run: speed per shape, memory of a long prompt, and the issue's goals."""
    cmd = "`bash benchmarks/gpu_run.sh` (tests, then `python benchmarks/gpu.py --json benchmarks/results/gpu.json`)"
    if res is None:
        return [
            "No GPU run is recorded yet: the machine the work was done on has no GPU, and the lent GPU",
            f"machine was not available. On one, {cmd} writes the tables of this section.",
        ]
    m = res["machine"]
    out = [f"GPU: {m.get('gpu', '?')} ({m.get('memory_gib', '?')} GiB), CUDA {m.get('cuda')}, torch {m.get('torch')}, "
           f"triton {m.get('triton')}, fla-core {m.get('fla')}, rwkv {m.get('rwkv')}. Made by {cmd}.", "",
           "Random weights, the same for every contender; decode and prefill with fp16 weights, training",
           "with fp32 weights under bf16 autocast, forward and backward at context 4096 (batch "
           f"{res['args'].get('train_batch', '1')}). Tokens/s, median of rounds. Official = the `rwkv` package, "
           "`cuda fp16`, TorchScript; its prefill is over "
           f"{res['args'].get('official_prefill', '?')} tokens.", "",
           "| shape | decode B=1 | eager B=1 | official B=1 | decode B=64 | B=64 / B=1 | prefill 4k | "
           "official prefill | train | fla train | PyTorch-form prefill / train |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    goals = []
    for name, r in res["shapes"].items():
        b1, b64 = _tok_s(r.get("decode_b1_graphs")), _tok_s(r.get("decode_b64_graphs"))
        off = (
            r.get("official_cuda_kernels")
            if "decode_tok_s" in (r.get("official_cuda_kernels") or {})
            else r.get("official")
        )
        off_b1 = _tok_s(off, "decode_tok_s")
        train, fla = _tok_s(r.get("train")), _tok_s(r.get("train_fla"))
        torch_forms = (
            f"{_cell(_tok_s(r.get('prefill_pytorch_forms')))} / {_cell(_tok_s(r.get('train_pytorch_forms')))}"
        )
        out.append(
            f"| {name} | {_cell(b1)} | {_cell(_tok_s(r.get('decode_b1_eager')))} | {_cell(off_b1)} | {_cell(b64)} | "
            f"{_cell(b64 / b1 if b1 and b64 else None, '{:.1f}x')} | {_cell(_tok_s(r.get('prefill')))} | "
            f"{_cell(_tok_s(off, 'prefill_tok_s'))} | {_cell(train)} | {_cell(fla)} | {torch_forms} |"
        )
        if b1 and off_b1:
            goals.append((f"{name} decode B=1 vs official", 1.5, b1 / off_b1))
        if b1 and b64:
            goals.append((f"{name} decode B=64 aggregate vs B=1", 20.0, b64 / b1))
        if train and fla:
            goals.append((f"{name} training vs fla's model", 1.0, train / fla))
        mem = r.get("long_prompt_memory")
        if isinstance(mem, dict) and "error" not in mem and "skipped" not in mem:
            out_mem = [f"Peak GPU memory above the weights while `engine.prefill` reads a prompt ({name}, fp16, "
                       f"chunks of {res['args'].get('memory_chunk')} tokens):", "",
                       "| prompt tokens | peak MiB | tokens/s |", "|---:|---:|---:|"]  # fmt: skip
            out_mem += [f"| {int(n):,} | {v['peak_mib']:,.0f} | {v['tok_s']:,.0f} |" for n, v in mem.items()]
            peaks = [v["peak_mib"] for v in mem.values()]
            goals.append((f"{name} peak memory, longest / shortest prompt", 1.05, peaks[-1] / peaks[0]))
    if "out_mem" in locals():
        out += ["", *out_mem]
    out += ["", "| goal | target | measured | met |", "|---|---:|---:|---|"]
    for goal, target, value in goals:
        met = value <= target if "memory" in goal else value >= target
        out.append(
            f"| {goal} | {'<=' if 'memory' in goal else '>='} {target:g}x | {value:.2f}x | {'yes' if met else 'no'} |"
        )
    return out


SHAPE_NAMES = {
    "v7-0.1b": "RWKV-7 0.1B shape (L12 C768 V65536)",
    "v7-0.4b": "RWKV-7 0.4B shape (L24 C1024 V65536)",
    "169m": "RWKV-4 169M shape (L12 C768 V50277)",
    "v6-0.1b": "RWKV-6 0.1B shape (L12 C768 V65536)",
    "v5-0.1b": "RWKV-5 0.1B shape (L12 C768 V65536)",
}


def _runs(cpu: dict, shape: str) -> dict[int, dict]:
    """threads -> that bench run, for one shape."""
    return {int(k.split("@")[1]): r for k, r in cpu.get("speed", {}).items() if k.split("@")[0] == shape}


def cpu_speed_section(cpu: dict) -> list[str]:
    """One table per shape: every contender's decode (B=1, B=8 aggregate) and prefill, 1 and 2 threads."""
    out: list[str] = []
    shapes = list(dict.fromkeys(k.split("@")[0] for k in cpu.get("speed", {})))
    for shape in shapes:
        runs = _runs(cpu, shape)
        threads = sorted(runs)
        first = runs[threads[0]]
        names = list(dict.fromkeys(k.rsplit(", B=", 1)[0] for k in first["decode_tok_s"]))
        loads = ", ".join(
            f"{t} thread{'s' * (t > 1)}: {r['load_average_before'][0]:.1f} before, {r['load_average_after'][0]:.1f} after"
            for t, r in runs.items()
        )
        out += [f"### {SHAPE_NAMES.get(shape, shape)}", "", machine_line(first["machine"]), "",
                f"1-minute load average around the runs ({loads}). Tokens/s, median of "
                f"{first['decode_tok_s'][names[0] + ', B=1']['rounds']} interleaved rounds (min - max); "
                f"decode {first['decode_tokens_per_round']} tokens per round, prefill {first['prefill_len']} tokens.",
                "", "| contender | " + " | ".join(f"decode B=1, {t}T | B=8 aggregate, {t}T | prefill, {t}T"
                                                  for t in threads) + " |",
                "|---|" + "---:|" * (3 * len(threads))]  # fmt: skip
        for name in names:
            cells = []
            for t in threads:
                r = runs[t]
                for table, key in ((r["decode_tok_s"], f"{name}, B=1"), (r["decode_tok_s"], f"{name}, B=8"),
                                   (r.get("prefill_tok_s", {}), name)):  # fmt: skip
                    v = table.get(key)
                    cells.append(f"{v['median']:.1f} ({v['min']:.0f} - {v['max']:.0f})" if v else "-")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        for note in first.get("notes", []):
            out += ["", f"Note: {note}"]
        out.append("")
    return out


def cpu_goal_rows(cpu: dict | None, quality: dict | None) -> list[str]:
    """Item 5 of issue 12 (and the thread, contention and quality bounds), each with its ratio."""
    out = ["| goal | target | measured | met |", "|---|---:|---:|---|"]

    def add(
        goal: str, target: float, value: float | None, why: str = "", fmt: str = "{:.2f}x", le: bool = False
    ):
        if value is None:
            out.append(f"| {goal} | {'<=' if le else '>='} {fmt.format(target)} | not measured{why} | - |")
            return
        met = value <= target if le else value >= target
        out.append(f"| {goal} | {'<=' if le else '>='} {fmt.format(target)} | {fmt.format(value)} | "
                   f"{'yes' if met else 'no'} |")  # fmt: skip

    def ratio(table: dict, a: str, b: str) -> float | None:
        return table[a]["median"] / table[b]["median"] if a in table and b in table else None

    def each_run(shape: str):
        """(threads, decode table, prefill table) at 1 and 2 threads; empty tables where not run."""
        runs = _runs(cpu, shape)
        for t in (1, 2):
            r = runs.get(t, {})
            yield t, r.get("decode_tok_s", {}), r.get("prefill_tok_s", {})

    cpu = cpu or {}
    pairs_llama = (("fp32", "f32"), ("bf16", "f16"), ("int8", "q8_0"), ("int4", "q4_0"))
    for shape in ("v7-0.1b", "v7-0.4b"):
        for t, d, p in each_run(shape):
            for ours, peer in pairs_llama:
                add(f"{shape} decode {ours} vs llama.cpp {peer}, {t}T", 1.0,
                    ratio(d, f"rwkvkit {ours}, B=1", f"llama.cpp {peer}, B=1"))  # fmt: skip
            add(
                f"{shape} prefill fp32 vs llama.cpp f32, {t}T", 1.3, ratio(p, "rwkvkit fp32", "llama.cpp f32")
            )
    for t, r in sorted(_runs(cpu, "169m").items()):
        d = r["decode_tok_s"]
        add(
            f"169m decode fp32 vs rwkv.cpp fp32, {t}T",
            1.2,
            ratio(d, "rwkvkit fp32, B=1", "rwkv.cpp fp32, B=1"),
        )
        add(
            f"169m decode bf16 vs rwkv.cpp fp16, {t}T",
            1.2,
            ratio(d, "rwkvkit bf16, B=1", "rwkv.cpp fp16, B=1"),
        )
        add(
            f"169m decode int8 vs rwkv.cpp fp16, {t}T",
            1.5,
            ratio(d, "rwkvkit int8, B=1", "rwkv.cpp fp16, B=1"),
        )
    for shape in ("169m", "v5-0.1b", "v6-0.1b", "v7-0.1b"):
        for t, d, p in each_run(shape):
            for v in ("fp32", "bf16"):
                add(f"{shape} decode {v} vs official {v}, {t}T", 1.3,
                    ratio(d, f"rwkvkit {v}, B=1", f"rwkv cpu {v}, B=1"))  # fmt: skip
                add(
                    f"{shape} prefill {v} vs official {v}, {t}T",
                    1.3,
                    ratio(p, f"rwkvkit {v}", f"rwkv cpu {v}"),
                )
    for shape in SHAPE_NAMES:  # one row per run: each precision's B=8 / B=1
        for t, d, _ in each_run(shape):
            got = {
                v: ratio(d, f"rwkvkit {v}, B=8", f"rwkvkit {v}, B=1")
                for v in ("fp32", "bf16", "int8", "int4")
            }
            got = {v: x for v, x in got.items() if x is not None}
            goal = f"{shape} B=8 aggregate vs B=1 (fp32, bf16, int8, int4), {t}T"
            if not got:
                out.append(f"| {goal} | >= 5.00x | not measured | - |")
                continue
            met = sum(x >= 5.0 for x in got.values())
            listed = ", ".join(f"{x:.1f}x" for x in got.values())
            out.append(
                f"| {goal} | >= 5.00x | {listed} | {'yes' if met == len(got) else f'{met} of {len(got)}'} |"
            )
    gen = cpu.get("generate") or {}
    add("`rwkvkit generate --max-tokens 100`, bundled model, wall incl. start-up", 1.0, gen.get("median_s"),
        fmt="{:.2f} s", le=True)  # fmt: skip
    for name, r in (cpu.get("threads") or {}).items():
        add(f"default threads ({r['default_threads']}) vs best of 1..{len(r['tok_s'])} ({r['best_threads']}), {name}",
            0.9, r["default_vs_best"])  # fmt: skip
    for name, r in (cpu.get("contention") or {}).items():
        add(f"decode kept beside a busy core, {name} ({r['threads']}T)", 0.5, r["kept"])
    if quality:
        cost = quality.get("bits_per_byte_cost", {})
        for v, bound in (("int8", 0.005), ("int4", 0.05)):
            add(
                f"{v} bits/byte cost, bundled model, held-out text",
                bound,
                cost.get(v),
                fmt="{:+.4f}",
                le=True,
            )
    return out


def threads_section(cpu: dict) -> list[str]:
    out = []
    sweep = cpu.get("threads") or {}
    if sweep:
        counts = list(next(iter(sweep.values()))["tok_s"])
        out += ["### Threads: decode fp32, B=1, at every thread count (interleaved), and the default", "",
                "| model | " + " | ".join(f"{n}T tok/s" for n in counts) + " | default | best | default / best | load |",
                "|---|" + "---:|" * (len(counts) + 4)]  # fmt: skip
        for name, r in sweep.items():
            vals = " | ".join(f"{r['tok_s'][n]['median']:.1f}" for n in counts)
            out.append(f"| {name} | {vals} | {r['default_threads']} | {r['best_threads']} | "
                       f"{r['default_vs_best']:.2f} | {r['load_average_before'][0]:.1f} |")  # fmt: skip
        out.append("")
    cont = cpu.get("contention") or {}
    if cont:
        out += ["### Contention: decode at the default thread count, alone and beside a busy loop on one core", "",
                "Alternating rounds in one process: a round alone, then a round with another process spinning "
                "(`while True: pass`); medians.", "",
                "| model | threads | alone tok/s | beside a busy core tok/s | kept | load after |",
                "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, r in cont.items():
            out.append(f"| {name} | {r['threads']} | {r['quiet_tok_s']:.1f} | {r['busy_tok_s']:.1f} | "
                       f"{r['kept']:.2f} | {r['load_average'][0]:.1f} |")  # fmt: skip
        out.append("")
    agree = cpu.get("agreement") or {}
    if agree:
        out += [f"Logits of the same random RWKV-7 0.1B-shape weights, fp32, a {agree['prompt_tokens']}-token prompt "
                "(every position), against the official package's: rwkvkit max |difference| "
                f"{agree['rwkvkit_fp32_vs_official_fp32']:.1e}, llama.cpp f32 "
                f"{agree['llama_cpp_f32_vs_official_fp32']:.1e} (largest logit {agree['logit_magnitude']:.1f}).", ""]  # fmt: skip
    gen = cpu.get("generate") or {}
    if gen:
        out += [f"`rwkvkit {' '.join(gen['command'][2:])}` (bundled model, a fresh process each time): "
                f"{gen['median_s']:.2f} s wall median ({gen['min_s']:.2f} - {gen['max_s']:.2f}), load "
                f"{gen['load_average'][0]:.1f}; a bare `python -c 'import torch'` took "
                f"{gen.get('import_torch_median_s', float('nan')):.2f} s in the same rounds.", ""]  # fmt: skip
    return out


def profile_section(res: dict) -> list[str]:
    """benchmarks/profile_step.py: the decode step's time in the native kernels and outside them."""
    out = ["### Where a decode step's time goes (torch.profiler, 1 thread, self time)", "",
           machine_line(res["machine"]), "",
           "| model | ms/step (profiled) | in the native kernels | largest other ops |", "|---|---:|---:|---|"]  # fmt: skip
    for name, r in res["profiles"].items():
        others = ", ".join(
            f"{t['op']} {t['share']:.0%}" for t in r["top"] if not t["op"].startswith("rwkvkit::")
        )
        out.append(f"| {name} | {r['ms_per_step_profiled']:.1f} | {r['native_share']:.0%} | {others} |")
    out += ["", "The native kernels' share is time spent streaming weights (memory-bound products) and "
            "in the WKV update; the rest is the step's per-token overhead."]  # fmt: skip
    return out


def quality_section(res: dict) -> list[str]:
    bpb = res["shakespeare_bits_per_byte"]
    out = ["### What bf16, int8 and int4 cost in accuracy", "", machine_line(res["machine"]), "",
           f"Real text: {res.get('model', 'a byte-level model trained here')}, bits per byte on "
           f"{res['eval']['bytes']:,} bytes of {res['eval']['text']}.", "",
           "| weights | bits per byte | vs fp32 |", "|---|---:|---:|"]  # fmt: skip
    for name, v in bpb.items():
        out.append(f"| {name} | {v:.4f} | {v - bpb['fp32']:+.4f} |")
    out += ["", "Random 169M-shaped weights (not a perplexity: random weights have nothing to lose), "
            "64-token prompt, against fp32:", "",
            "| weights | max abs logit error | logit magnitude | mean KL (nats/token) | top-1 agreement |",
            "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in res["random_169m_vs_fp32"].items():
        out.append(f"| {name} | {r['max_abs_logit_error']:.4f} | {r['logit_spread']:.2f} | "
                   f"{r['mean_kl_nats_per_token']:.2e} | {r['top1_agreement']:.3f} |")  # fmt: skip
    return out


def plot_cpu(cpu: dict) -> str:
    """Decode B=1 tokens/s per contender, one panel per shape, bars for 1 and 2 threads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(k.split("@")[0] for k in cpu["speed"]))
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 5), squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        runs = _runs(cpu, shape)
        names = [k[:-5] for k in next(iter(runs.values()))["decode_tok_s"] if k.endswith("B=1")]
        height = 0.8 / len(runs)
        for i, (t, r) in enumerate(sorted(runs.items())):
            vals = [r["decode_tok_s"].get(f"{n}, B=1", {}).get("median", 0) for n in names]
            ax.barh([j + i * height for j in range(len(names))], vals, height, label=f"{t} thread(s)")
        ax.set_yticks([j + 0.4 - height / 2 for j in range(len(names))], names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(SHAPE_NAMES.get(shape, shape), fontsize=9)
        ax.set_xlabel("decode tokens/s, B=1 (median)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOTS / "cpu_decode.png", dpi=100)
    plt.close(fig)
    return "cpu_decode.png"


def main() -> int:
    cpu = load("cpu.json")
    quality = load("quant_quality.json")
    speeds = {s: r for s in ("169m", "430m") if (r := load(f"speed_{s}.json"))}
    context = load("context.json")
    intro = (ROOT / "benchmarks" / "INTRO.md").read_text()
    lines = [intro.rstrip(), ""]
    if cpu or quality:
        lines += ["## Issue 12's goals (CPU decode), as measured in the runs below", "",
                  *cpu_goal_rows(cpu, quality), ""]  # fmt: skip
        notes = ROOT / "benchmarks" / "cpu_notes.md"
        if notes.exists():
            lines += [notes.read_text().rstrip(), ""]
    if cpu and cpu.get("speed"):
        lines += ["## CPU speed against the peers", "", *cpu_speed_section(cpu),
                  f"![decode](benchmarks/plots/{plot_cpu(cpu)})", ""]  # fmt: skip
    if cpu:
        lines += threads_section(cpu)
    if prof := load("profile_step.json"):
        lines += [*profile_section(prof), ""]
    if quality:
        lines += ["## Quantization", "", *quality_section(quality), ""]
    if speeds or context:
        lines += ["## Earlier runs (issues 3 and 4)", "", *goal_rows(speeds, context), ""]
    if speeds:
        for shape, res in speeds.items():
            lines += [*speed_section(res, shape), ""]
        files = plot_speed(speeds)
        lines += [f"![{f}](benchmarks/plots/{f})" for f in files] + [""]
    if context:
        lines += ["## Context length", "", *context_section(context), "",
                  f"![context](benchmarks/plots/{plot_context(context)})", ""]  # fmt: skip
    lines += ["## On a GPU", "", *gpu_section(load("gpu.json")), ""]
    serve = {name: r for name in ("serve", "serve_bf16") if (r := load(f"{name}.json"))}
    if serve:
        lines += ["## Serving (`rwkvkit serve`)", "", *serve_section(list(serve.values())),
                  *(f"![{name}](benchmarks/plots/{name}.png)" for name in serve), ""]  # fmt: skip
    if gguf := load("gguf_agreement.json"):
        lines += ["## Agreement with llama.cpp and onnxruntime", "", *gguf_section(gguf), ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
