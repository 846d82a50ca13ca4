"""``rwkvkit convert``: a checkpoint to a BlinkDL .pth, .safetensors, a Hugging Face folder, rwkv.cpp,
a llama.cpp GGUF file or an ONNX graph of the one-token step."""

from __future__ import annotations

import argparse

from ..convert import OUTPUT_DTYPES, TARGETS, convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        help="checkpoint to read: .pth, .safetensors, rwkv.cpp .bin, .gguf, HF folder, run folder, "
        "hf://OWNER/REPO[@REVISION]/FILE or a Hub repo id",
    )
    parser.add_argument("dst", help="where to write (a folder for --to hf)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="output format")
    # convert's own --dtype: the output's weight type, which for GGUF includes a quantized one.
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=OUTPUT_DTYPES,
        help="weight dtype of the output (q8_0: GGUF only; 2-D matrices, as llama.cpp quantizes)",
    )


def run(args: argparse.Namespace) -> int:
    out = convert(args.src, args.dst, args.to, args.dtype)
    print(f"wrote {out}")
    return 0
