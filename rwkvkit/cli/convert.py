"""``rwkvkit convert``: a checkpoint to a BlinkDL .pth, .safetensors, a Hugging Face folder, rwkv.cpp,
a llama.cpp GGUF file or an ONNX graph of the one-token step."""

from __future__ import annotations

import argparse

from ..convert import OUTPUT_DTYPES, TARGETS, convert
from .flags import add_dtype_flag, path_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        type=path_text,
        help="checkpoint to read: .pth, .safetensors, rwkv.cpp .bin, .gguf, HF folder, run folder, "
        "hf://OWNER/REPO[@REVISION]/FILE or a Hub repo id",
    )
    parser.add_argument("dst", type=path_text, help="where to write (a folder for --to hf)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="output format")
    add_dtype_flag(
        parser,
        "weight dtype of the output (q8_0: GGUF only, for 2-D matrices, as llama.cpp quantizes)",
        default=None,
        choices=OUTPUT_DTYPES,
    )
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")


def run(args: argparse.Namespace) -> int:
    out = convert(args.src, args.dst, args.to, args.dtype, force=args.force)
    print(f"wrote {out}")
    return 0
