"""``rwkvkit prepare``: text, JSONL or binidx files -> token files a training run reads."""

from __future__ import annotations

import argparse

from ..train.data import prepare
from .flags import add_progress_flag, add_tokenizer_flag, path_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        type=path_text,
        help="text files, .jsonl files ({'text': ...} per line), binidx .bin/.idx, or folders of them",
    )
    p.add_argument(
        "--out", required=True, type=path_text, help="folder for train.bin, val.bin and manifest.json"
    )
    add_tokenizer_flag(p, default="byte")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="share of tokens held out for validation (the end of the stream)",
    )
    add_progress_flag(p)


def run(args: argparse.Namespace) -> int:
    m = prepare(args.inputs, args.out, args.tokenizer, args.val_fraction, progress=args.progress)
    print(
        f"{args.out}: {m['train_tokens']:,} train + {m['val_tokens']:,} validation tokens "
        f"({m['tokenizer']}, {m['dtype']})"
    )
    return 0
