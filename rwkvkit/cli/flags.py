"""What the text commands (generate, chat, later serve) share: model and tokenizer loading,
the sampling flags, and picking a tokenizer for a model."""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RwkvkitError, TokenizerError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class NoModelError(RwkvkitError):
    """No --model given and no bundled default model installed."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="checkpoint: BlinkDL .pth or .safetensors, Hugging Face folder, rwkv.cpp .bin "
        "(default: the bundled model, if this install has one)",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="NAME",
        help='"world", "20b", "byte" or a vocabulary file (default: picked from the model)',
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument(
        "--dtype", default="fp32", choices=sorted(DTYPES), help="weights dtype (default: fp32)"
    )


def add_sampling_arguments(parser: argparse.ArgumentParser, max_tokens: int) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=max_tokens, metavar="N", help=f"default {max_tokens}")
    g.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 = greedy (default 1.0)")
    g.add_argument(
        "--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling (default 1.0: off)"
    )
    g.add_argument(
        "--top-k", type=int, default=0, metavar="K", help="keep the K most likely (default 0: off)"
    )
    g.add_argument(
        "--min-p", type=float, default=0.0, metavar="M", help="drop tokens < M x the top one (default 0)"
    )
    g.add_argument(
        "--presence-penalty", type=float, default=0.0, metavar="A", help="logit -= A for seen tokens"
    )
    g.add_argument(
        "--frequency-penalty",
        type=float,
        default=0.0,
        metavar="B",
        help="logit -= B x decayed count of a token",
    )
    g.add_argument(
        "--penalty-decay",
        type=float,
        default=0.996,
        metavar="D",
        help="counts decay by D per token (default 0.996)",
    )
    g.add_argument("--seed", type=int, default=None, metavar="S", help="random seed (same seed, same text)")
    g.add_argument("--stats", action="store_true", help="print speed statistics to stderr")


def sampling_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "presence_penalty": args.presence_penalty,
        "frequency_penalty": args.frequency_penalty,
        "penalty_decay": args.penalty_decay,
    }


def unescape(text: str) -> str:
    r"""Turn the escapes a shell leaves alone (\n, \t, \r, \\) into the characters they name."""
    out, i = [], 0
    table = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def model_path_from_args(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    from ..defaults import default_model_path

    path = default_model_path()
    if path is None:
        raise NoModelError(
            "no model given, and this install has no bundled default model. Pass one with --model PATH "
            "(a BlinkDL .pth or .safetensors, a Hugging Face folder or an rwkv.cpp .bin), e.g. "
            "rwkvkit generate --model RWKV-4-Pile-169M.pth --prompt 'Hello'"
        )
    return path


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, from its JSON header alone."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            return dict(json.loads(f.read(n)).get("__metadata__") or {})
    except (OSError, ValueError, struct.error):
        return {}


def tokenizer_name_for_model(model: nn.Module) -> str:
    """A checkpoint's tokenizer: what its metadata names, else what its vocabulary size implies."""
    source = getattr(model, "source", None)
    if source is not None and source.format == "safetensors":
        meta = _safetensors_metadata(source.path)
        for key in ("rwkvkit_tokenizer", "tokenizer"):
            if meta.get(key):
                return meta[key]
    from ..tokenizer import tokenizer_name_for_vocab_size

    vocab = model.config.vocab_size  # type: ignore[attr-defined]
    name = tokenizer_name_for_vocab_size(vocab)
    if name is None:
        raise TokenizerError(
            f"cannot tell the tokenizer of a model with a vocabulary of {vocab} tokens; "
            'pass --tokenizer ("world", "20b", "byte" or a vocabulary file)'
        )
    return name


def load_model_and_tokenizer(args: argparse.Namespace) -> tuple[nn.Module, Any]:
    from .. import load_model
    from ..tokenizer import load_tokenizer

    model = load_model(model_path_from_args(args), device=args.device, dtype=DTYPES[args.dtype])
    tokenizer = load_tokenizer(args.tokenizer or tokenizer_name_for_model(model))
    vocab = model.config.vocab_size  # type: ignore[attr-defined]
    if tokenizer.vocab_size > vocab:
        raise TokenizerError(
            f"the {tokenizer.name} tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab}; "
            "pass the model's own tokenizer with --tokenizer"
        )
    return model, tokenizer
