"""``rwkvkit bench``: decode and prefill speed, ours and the peers', measured side by side.

Every contender runs in this one process, in interleaved rounds (A, B, C, A, B, C, ...; the
order rotates every round), and the table reports the median round. On a shared or throttled
machine absolute numbers drift; ratios measured this way stay comparable. The peers (the official
``rwkv`` package, ``transformers``, rwkv.cpp from the ``rwkv-cpp`` sdist) are used when they are
installed and skipped with a note when not; benchmarks/setup.sh installs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import RwkvkitError

SHAPES = {  # the RWKV-4 Pile models' shapes
    "169m": dict(vocab_size=50277, n_layer=12, n_embd=768, ffn_dim=3072),
    "430m": dict(vocab_size=50277, n_layer=24, n_embd=1024, ffn_dim=4096),
    "tiny": dict(vocab_size=1000, n_layer=2, n_embd=64, ffn_dim=256),
}
OURS = ("fp32", "bf16", "fp16", "int8")
PEERS = ("rwkv-fp32", "rwkv-bf16", "hf-fp32", "rwkvcpp-fp32", "rwkvcpp-fp16")


@dataclasses.dataclass
class Contender:
    """One implementation: ``step()`` decodes one more token (keeping its own state);
    ``prefill(tokens)`` runs a prompt from an empty state, or is None when it cannot."""

    name: str
    make_step: Callable[[int], Callable[[], None]]  # batch size -> one-token step
    prefill: Callable[[list[int]], None] | None
    batches: tuple[int, ...] = (1,)


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("rwkv", "transformers", "rwkv_cpp"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg.replace("_", "-"))
        except Exception:
            versions[pkg] = None
    from .. import __version__

    versions["rwkvkit"] = __version__
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": versions,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def random_checkpoint(shape: str, folder: Path, seed: int = 0) -> Path:
    """A random BlinkDL .pth of a named shape (cached in ``folder``)."""
    from ..models.rwkv4 import RWKV4Config
    from ..testing import random_rwkv4_state_dict

    if shape not in SHAPES:
        raise RwkvkitError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rwkv4-random-{shape}-seed{seed}.pth"
    if not path.exists():
        from ..fileio import atomic_write

        sd = random_rwkv4_state_dict(RWKV4Config(**SHAPES[shape]), seed)
        atomic_write(path, lambda p: torch.save(sd, p))
    return path


# ---------------------------------------------------------------------------- contenders


def rwkvkit_contender(path: Path, variant: str, *, plain: bool = False) -> Contender:
    """Ours through the public API: ``load_model(path, dtype=..., quantize=...)``."""
    from .. import load_model
    from ..checkpoint import build_model, read_checkpoint

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}
    if plain:  # the reference modules, no fast layers: what the speed-ups are measured against
        model = build_model(read_checkpoint(path), dtype=dtype[variant])
    else:
        model = load_model(path, dtype=dtype[variant], quantize="int8" if variant == "int8" else None)

    def make_step(batch: int) -> Callable[[], None]:
        box: list[Any] = [None, torch.zeros(batch, 1, dtype=torch.long)]

        def step() -> None:
            with torch.inference_mode():
                logits, box[0] = model(box[1], box[0])
            box[1] = logits[:, -1].argmax(-1, keepdim=True)

        return step

    def prefill(tokens: list[int]) -> None:
        with torch.inference_mode():  # like the official package: the state and the last logits
            model(torch.tensor([tokens]), last_only=True)

    name = f"rwkvkit {variant}" + (" (plain modules)" if plain else "")
    return Contender(name, make_step, prefill, batches=(1, 8))


def official_contender(path: Path, strategy: str) -> Contender:
    """The official ``rwkv`` package (its default settings: TorchScript on unless RWKV_JIT_ON=0)."""
    from rwkv.model import RWKV  # type: ignore[import-not-found]

    model = RWKV(str(path.with_suffix("")), strategy, verbose=False)

    def make_step(batch: int) -> Callable[[], None]:
        box: list[Any] = [None, 0]

        def step() -> None:
            with torch.inference_mode():
                logits, box[0] = model.forward([box[1]], box[0])
            box[1] = int(logits.argmax())

        return step

    def prefill(tokens: list[int]) -> None:
        with torch.inference_mode():
            model.forward(tokens, None)

    return Contender(f"rwkv {strategy}", make_step, prefill)


def hf_contender(path: Path, workdir: Path) -> Contender:
    """transformers' RwkvForCausalLM on the same weights (converted with ``rwkvkit convert --to hf``)."""
    from transformers import RwkvForCausalLM  # type: ignore[import-not-found]

    from ..convert import convert

    folder = workdir / (path.stem + "-hf")
    if not (folder / "config.json").exists():
        convert(path, folder, "hf")
    model = RwkvForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()

    def make_step(batch: int) -> Callable[[], None]:
        box: list[Any] = [None, torch.zeros(1, 1, dtype=torch.long)]

        def step() -> None:
            with torch.inference_mode():
                out = model(input_ids=box[1], state=box[0], use_cache=True)
            box[0] = out.state
            box[1] = out.logits[:, -1].argmax(-1, keepdim=True)

        return step

    def prefill(tokens: list[int]) -> None:
        with torch.inference_mode():
            model(input_ids=torch.tensor([tokens]), use_cache=True)

    return Contender("transformers fp32", make_step, prefill)


def rwkvcpp_contender(path: Path, workdir: Path, data_type: str, threads: int) -> Contender:
    """rwkv.cpp (the ``rwkv-cpp`` 0.0.1 sdist), file made by its own converter; one token per call."""
    import importlib.util

    spec = importlib.util.find_spec("rwkv_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("rwkv_cpp is not installed", name="rwkv_cpp")
    # The sdist's modules import each other as top-level modules, and its package __init__ fails
    # for that reason: put its folder on the path and load the library file it ships directly.
    pkg = Path(next(iter(spec.submodule_search_locations)))
    sys.path.insert(0, str(pkg))
    import rwkv_cpp_model  # type: ignore[import-not-found]
    import rwkv_cpp_shared_library  # type: ignore[import-not-found]

    out = workdir / f"{path.stem}-rwkvcpp-{data_type}.bin"
    if not out.exists():
        subprocess.run(
            [sys.executable, str(pkg / "convert_pytorch_to_ggml.py"), str(path), str(out), data_type],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    lib = rwkv_cpp_shared_library.RWKVSharedLibrary(str(pkg / "librwkv.so"))
    model = rwkv_cpp_model.RWKVModel(lib, str(out), thread_count=threads)

    def make_step(batch: int) -> Callable[[], None]:
        logits, state = model.eval(0, None)
        bufs = [state, state.clone()]
        box = [0, int(logits.argmax())]

        def step() -> None:
            src, dst = bufs[box[0]], bufs[1 - box[0]]
            model.eval(box[1], src, dst, logits)
            box[0] = 1 - box[0]
            box[1] = int(logits.argmax())

        return step

    short = {"float32": "fp32", "float16": "fp16"}[data_type]
    return Contender(f"rwkv.cpp {short}", make_step, None)


def build_contenders(
    path: Path, names: list[str], workdir: Path, threads: int
) -> tuple[list[Contender], list[str]]:
    """The named contenders that can run here, and a note for each that cannot."""
    made, notes = [], []
    for name in names:
        try:
            if name in OURS:
                made.append(rwkvkit_contender(path, name))
            elif name.startswith("plain-") and name[6:] in OURS:
                made.append(rwkvkit_contender(path, name[6:], plain=True))
            elif name == "rwkv-fp32":
                made.append(official_contender(path, "cpu fp32"))
            elif name == "rwkv-bf16":
                made.append(official_contender(path, "cpu bf16"))
            elif name == "hf-fp32":
                made.append(hf_contender(path, workdir))
            elif name in ("rwkvcpp-fp32", "rwkvcpp-fp16"):
                made.append(rwkvcpp_contender(path, workdir, "float" + name[-2:], threads))
            else:
                raise RwkvkitError(f"unknown contender {name!r}; choose from {', '.join(OURS + PEERS)}")
        except ImportError as e:
            notes.append(f"{name}: skipped, not installed ({e.name}); run benchmarks/setup.sh")
    return made, notes


# ---------------------------------------------------------------------------- measuring


def interleaved(
    tasks: dict[str, Callable[[], float]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each task once per round, rotating the order; returns each task's results per round."""
    names = list(tasks)
    for _ in range(warmup):
        for n in names:
            tasks[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            out[n].append(tasks[n]())
    return out


def decode_task(step: Callable[[], None], tokens: int, batch: int) -> Callable[[], float]:
    """Tokens per second (all sequences of the batch together) over ``tokens`` steps."""

    def run() -> float:
        t = time.perf_counter()
        for _ in range(tokens):
            step()
        return batch * tokens / (time.perf_counter() - t)

    return run


def prefill_task(prefill: Callable[[list[int]], None], length: int, vocab: int) -> Callable[[], float]:
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (length,), generator=gen).tolist()

    def run() -> float:
        t = time.perf_counter()
        prefill(tokens)
        return length / (time.perf_counter() - t)

    return run


def summarize(results: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        n: {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": len(v)}
        for n, v in results.items()
    }


def run_bench(
    path: Path,
    names: list[str],
    *,
    threads: int,
    rounds: int,
    decode_tokens: int,
    prefill_len: int,
    batch8: bool,
    workdir: Path,
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    contenders, notes = build_contenders(path, names, workdir, threads)
    from ..checkpoint import read_checkpoint

    vocab = read_checkpoint(path).state_dict["emb.weight"].shape[0]
    decode: dict[str, Callable[[], float]] = {}
    for c in contenders:
        decode[f"{c.name}, B=1"] = decode_task(c.make_step(1), decode_tokens, 1)
        if batch8 and 8 in c.batches:
            decode[f"{c.name}, B=8"] = decode_task(c.make_step(8), max(1, decode_tokens // 2), 8)
    prefill = {
        c.name: prefill_task(c.prefill, prefill_len, vocab) for c in contenders if c.prefill is not None
    }
    return {
        "machine": machine_info(threads),
        "checkpoint": str(path),
        "decode_tok_s": summarize(interleaved(decode, rounds)),
        "prefill_tok_s": summarize(interleaved(prefill, rounds)) if prefill_len else {},
        "prefill_len": prefill_len,
        "decode_tokens_per_round": decode_tokens,
        "notes": notes,
    }


def format_table(result: dict[str, Any], reference: str | None = None) -> str:
    """Markdown tables: median tokens/s (min-max over rounds), and each row's ratio to ``reference``."""
    lines = []
    m = result["machine"]
    lines.append(
        f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads']} threads; "
        f"load average at start {m['load_average_at_start']}"
    )
    for title, key in (
        ("decode", "decode_tok_s"),
        (f"prefill, {result['prefill_len']} tokens", "prefill_tok_s"),
    ):
        rows = result[key]
        if not rows:
            continue
        ref = next((v["median"] for k, v in rows.items() if k in (reference, f"{reference}, B=1")), None)
        lines.append("")
        lines.append(f"| {title} | tokens/s (median) | min - max | vs {reference or '-'} |")
        lines.append("|---|---:|---:|---:|")
        for name, s in rows.items():
            ratio = f"{s['median'] / ref:.2f}x" if ref else "-"
            lines.append(f"| {name} | {s['median']:.1f} | {s['min']:.1f} - {s['max']:.1f} | {ratio} |")
    for note in result.get("notes", []):
        lines.append(f"\nnote: {note}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="checkpoint to measure; default: random weights of --shape")
    parser.add_argument("--shape", default="169m", choices=tuple(SHAPES), help="random model shape")
    parser.add_argument(
        "--contenders",
        default="fp32,bf16,int8",
        help=f"comma-separated; ours: {','.join(OURS)} (plain-<x>: without the fast layers); "
        f"peers: {','.join(PEERS)}",
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--decode-tokens", type=int, default=16, help="tokens decoded per round")
    parser.add_argument("--prefill", type=int, default=512, help="prompt length (0: skip prefill)")
    parser.add_argument("--no-batch", action="store_true", help="skip batched decode (B=8)")
    parser.add_argument("--reference", default=None, help="row whose speed the ratios divide by")
    parser.add_argument("--workdir", default=None, help="where random checkpoints and conversions go")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.gettempdir()) / "rwkvkit-bench"
    path = Path(args.model) if args.model else random_checkpoint(args.shape, workdir)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    result = run_bench(
        path,
        names,
        threads=args.threads,
        rounds=args.rounds,
        decode_tokens=args.decode_tokens,
        prefill_len=args.prefill,
        batch8=not args.no_batch,
        workdir=workdir,
    )
    print(format_table(result, args.reference))
    if args.json:
        from ..fileio import atomic_path

        with atomic_path(Path(args.json)) as p:
            p.write_text(json.dumps(result, indent=2) + "\n")
    return 0
