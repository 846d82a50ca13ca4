"""``rwkvkit bench``: decode and prefill speed, ours and the peers', measured side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..bench import WORKDIR
from ..bench.contenders import OURS, SHAPES, check_names, random_checkpoint
from ..bench.peers import LLAMA_CPP_DIR, PEERS
from ..bench.run import run_bench
from ..bench.table import format_table
from ..errors import FileAccessError
from ..fileio import check_writable, os_problem, write_json
from .flags import add_json_flag, add_threads_flag, integer, path_text, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", nargs="?", type=path_text, help="checkpoint to measure (default: random weights of --shape)"
    )
    parser.add_argument("--shape", default="169m", choices=tuple(SHAPES), help="random model shape")
    parser.add_argument(
        "--contenders",
        default="fp32,bf16,int8",
        help=f"comma-separated; ours: {','.join(OURS)} (plain-<x>: without the fast layers; <x>-compiled: "
        "the step compiled with torch.compile); "
        f"peers: {','.join(PEERS)}",
    )
    add_threads_flag(parser, torch.get_num_threads())
    parser.add_argument(
        "--rounds", type=positive_int, default=5, help="interleaved rounds; the median is reported"
    )
    parser.add_argument("--decode-tokens", type=positive_int, default=16, help="tokens decoded per round")
    parser.add_argument("--prefill", type=integer(0), default=512, help="prompt length (0: skip prefill)")
    parser.add_argument("--no-batch", action="store_true", help="skip batched decode (B=8)")
    parser.add_argument(
        "--reference",
        help='row whose speed the ratios divide by, e.g. "llama.cpp q8_0" (default: none, no ratios)',
    )
    parser.add_argument(
        "--workdir", default=str(WORKDIR), type=path_text, help="where random checkpoints and conversions go"
    )
    parser.add_argument(
        "--llama-cpp",
        metavar="DIR",
        type=path_text,
        default=str(LLAMA_CPP_DIR),
        help="llama.cpp's converter (convert_hf_to_gguf.py and its folders; benchmarks/setup.sh puts it here)",
    )
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    if args.json:
        check_writable(args.json, "--json file")
    workdir = Path(args.workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file of that name, a parent that is a file, no permission
        problem = "is a file, not a folder" if isinstance(e, FileExistsError) else os_problem(e)
        raise FileAccessError(workdir, f"--workdir: {problem}") from None
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    check_names(names)
    path = Path(args.model) if args.model else random_checkpoint(args.shape, workdir)
    result = run_bench(
        path,
        names,
        threads=args.threads,
        rounds=args.rounds,
        decode_tokens=args.decode_tokens,
        prefill_len=args.prefill,
        batch8=not args.no_batch,
        workdir=workdir,
        reference=args.reference,
        llama_cpp=Path(args.llama_cpp),
    )
    print(format_table(result, args.reference))
    if args.json:
        write_json(args.json, result)
    return 0
