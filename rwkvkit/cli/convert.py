"""``rwkvkit convert``: a checkpoint to a BlinkDL .pth, .safetensors, a Hugging Face folder or rwkv.cpp."""

from __future__ import annotations

import argparse

from ..convert import TARGETS, convert
from .flags import add_dtype_flag, path_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        type=path_text,
        help="checkpoint to read: .pth, .safetensors, rwkv.cpp .bin, HF folder or run folder",
    )
    parser.add_argument("dst", type=path_text, help="where to write (a folder for --to hf)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="output format")
    add_dtype_flag(parser, "weight dtype of the output", default=None)
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")


def run(args: argparse.Namespace) -> int:
    out = convert(args.src, args.dst, args.to, args.dtype, force=args.force)
    print(f"wrote {out}")
    return 0
