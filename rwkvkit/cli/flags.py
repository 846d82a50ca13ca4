"""The flags several verbs share, each declared once here, and what the verbs make of them:
the model (and the bundled default), the tokenizer, device and dtype, how it runs (quantization,
threads, compilation), sampling, ``--json``, ``--no-progress``.

Help texts say nothing about defaults: the command's help formatter appends every default, so
the help cannot disagree with the code. A flag whose default is None says in words what None means.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_model, tokenizer_for_model
from ..compiled import compile_step
from ..defaults import default_model_path
from ..dtypes import DTYPES
from ..errors import RwkvkitError
from ..inference import QUANTIZE_MODES, default_threads
from ..tokenizer import Tokenizer


class NoModelError(RwkvkitError):
    """No --model given and no bundled default model installed."""


def add_model_flags(parser: argparse.ArgumentParser, *, several: bool = False) -> None:
    """--model, --tokenizer, --device, --dtype: the flags of every verb that runs a model."""
    parser.add_argument(
        "--model",
        metavar="PATH",
        action="append" if several else "store",
        help="checkpoint: BlinkDL .pth or .safetensors, Hugging Face folder, rwkv.cpp .bin, llama.cpp .gguf, "
        "training run folder, or on the Hugging Face Hub hf://OWNER/REPO[@REVISION]/FILE or OWNER/REPO"
        + ("; give several times to compare models side by side" if several else "")
        + " (default: the bundled model, if this install has one)",
    )
    add_tokenizer_flag(parser)
    add_device_flag(parser)
    add_dtype_flag(parser, "weights dtype")
    add_speed_flags(parser)


def add_speed_flags(parser: argparse.ArgumentParser) -> None:
    """--quantize, --threads, --compile: how a loaded model runs (rwkvkit/inference.py)."""
    add_quantize_flag(parser)
    add_threads_flag(parser)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the one-token step with torch.compile (needs a C++ compiler; the first run on a "
        "machine compiles for a minute or more, later runs reuse the cache)",
    )


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def load_with_flags(path: str | Path, args: argparse.Namespace) -> nn.Module:
    """The model at ``path`` as --device, --dtype and --quantize say, then run as --threads and
    --compile say. Loading runs on one thread unless --threads says otherwise: its copies and
    checks are memory-bound, and on a machine whose other core is busy two OpenMP threads made
    loading the bundled model 5-15x slower (0.1 s against 0.4-1.5 s) while gaining nothing when quiet."""
    torch.set_num_threads(args.threads or 1)
    model = load_model(path, device=args.device, dtype=DTYPES[args.dtype], quantize=args.quantize)
    return apply_speed_flags(model, args)


def apply_speed_flags(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """--threads (or the default for this model and machine) and --compile, on a loaded model."""
    torch.set_num_threads(args.threads or default_threads(model))
    if args.compile:
        compile_step(model)
    return model


def add_tokenizer_flag(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--tokenizer",
        metavar="NAME",
        default=default,
        help='"world", "20b", "byte", a vocabulary file or a .gguf file (its tokenizer)'
        + ("" if default else " (default: the model's own)"),
    )


def add_device_flag(parser: argparse.ArgumentParser, default: str = "cpu") -> None:
    auto = "; auto: the GPU of this rank if there is one, else cpu" if default == "auto" else ""
    parser.add_argument("--device", default=default, help=f"torch device, e.g. cpu, cuda or cuda:1{auto}")


def add_dtype_flag(
    parser: argparse.ArgumentParser, help: str, choices: tuple[str, ...] = tuple(DTYPES)
) -> None:
    """--dtype; ``choices`` beyond the torch dtypes where the verb writes files (convert: GGUF's q8_0)."""
    parser.add_argument("--dtype", default="fp32", choices=choices, help=help)


def add_quantize_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        help="store the matrices as weight-only int8 (per-row scales) or int4 (groups of 64 inputs) "
        "(default: none, the --dtype weights)",
    )


def add_threads_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: int | None = None
) -> None:
    """--threads N (N >= 1): declared here for every verb that takes it."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=default,
        metavar="N",
        help="torch CPU threads"
        + ("" if default else " (default: chosen from the model's size and this machine's cores)"),
    )


def named_path(text: str) -> tuple[str, str]:
    """NAME=PATH (serve's --state and --adapter: a model name and what it is made of)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH (e.g. pirate=runs/pirate)")
    return name.strip(), path


def add_state_flag(parser: argparse.ArgumentParser, help: str, *, named: bool = False) -> None:
    """--state FILE: a state file (rwkvkit.save_state, chat's /save, a tuned state) to start from;
    ``named``: --state NAME=FILE, repeatable, each a model name that starts from its state."""
    form: dict[str, Any] = (
        {"type": named_path, "action": "append", "default": [], "metavar": "NAME=PATH"}
        if named
        else {"metavar": "FILE"}
    )
    parser.add_argument("--state", help=help, **form)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", metavar="OUT", help="also write the results to this JSON file (default: no file)"
    )


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar on stderr"
    )


def add_sampling_flags(parser: argparse.ArgumentParser, max_tokens: int) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument(
        "--max-tokens", type=int, default=max_tokens, metavar="N", help="tokens to generate at most"
    )
    g.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling; 1 = off")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K most likely; 0 = off")
    g.add_argument("--min-p", type=float, default=0.0, metavar="M", help="drop tokens < M x the top one")
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
        "--penalty-decay", type=float, default=0.996, metavar="D", help="counts decay by D per token"
    )
    g.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="S",
        help="random seed: the same seed gives the same text (default: a fresh one each run)",
    )
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


def default_model() -> Path:
    """The bundled model, or an error saying how to pass one."""
    path = default_model_path()
    if path is None:
        raise NoModelError(
            "no model given, and this install has no bundled default model. Pass one with --model PATH "
            "(a BlinkDL .pth or .safetensors, a Hugging Face folder or an rwkv.cpp .bin), e.g. "
            "rwkvkit generate --model RWKV-4-Pile-169M.pth --prompt 'Hello'"
        )
    return path


def load_model_and_tokenizer(args: argparse.Namespace) -> tuple[nn.Module, Tokenizer]:
    """The model of --model (or the bundled one) on --device in --dtype (--quantize, --threads,
    --compile: see load_with_flags), and its tokenizer."""
    model = load_with_flags(args.model or default_model(), args)
    return model, tokenizer_for_model(model, args.tokenizer)
