"""The flags several verbs share, each declared once here, and what the verbs make of them:
the model (and the bundled default), the tokenizer, device and dtype, how it runs (quantization,
threads, compilation), sampling, ``--json``, ``--no-progress``.

Help texts say nothing about defaults: the command's help formatter appends every default, so
the help cannot disagree with the code. A flag whose default is None says in words what None means.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import load_model, tokenizer_for_model
from ..compiled import compile_step
from ..defaults import default_model_path
from ..device import resolve_device, set_cpu_threads
from ..dtypes import DTYPES
from ..errors import RwkvkitError
from ..fileio import check_utf8, decode_utf8
from ..inference import QUANTIZE_MODES, default_threads
from ..sampling import SamplingParams
from ..tokenizer import Tokenizer


class NoModelError(RwkvkitError):
    """No --model given and no bundled default model installed."""


# ---------------------------------------------------------------- value types: argparse's ``type=``
# Each checks one flag's value as argparse reads it, so a bad value is a usage error naming the flag
# ("argument --seed: ...") before anything is loaded.


def integer(least: int | None = None, below: int | None = None) -> Callable[[str], int]:
    """An int flag with ``least <= value < below``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (least is not None and value < least) or (below is not None and value >= below):
            rule = " and ".join(
                ([f">= {least}"] if least is not None else []) + ([f"< {below}"] if below is not None else [])
            )
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = "integer"
    return parse


def number(
    low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> Callable[[str], float]:
    """A finite float flag with ``low <= value`` (``low < value`` if low_open) and ``value <= high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            rule = "a finite number"
            if low is not None:
                rule += f" {'>' if low_open else '>='} {low:g}"
            if high is not None:
                rule += f" and <= {high:g}"
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def text(value: str) -> str:
    """A text flag: invalid UTF-8 in argv reaches Python as lone surrogates, refused here."""
    try:
        return check_utf8(value, "the value")
    except RwkvkitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def path_text(value: str) -> str:
    """A path flag: not empty (an unset shell variable, ``--model "$MODEL"``, would otherwise mean
    the default and run something the user did not ask for)."""
    if not value:
        raise argparse.ArgumentTypeError("empty (an unset shell variable?)")
    return value


def nonempty_text(value: str) -> str:
    """A text flag that means something only when given: a name, a key, a host."""
    return path_text(text(value))


def device_name(value: str) -> str:
    """A --device that exists on this machine (kept as the name the user wrote)."""
    try:
        resolve_device(value)
    except RwkvkitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


# torch.Generator takes seeds in [0, 2**64); one flag, one rule, for every verb that has --seed.
seed = integer(0, 2**64)


def read_stdin_text() -> str:
    """All of standard input as UTF-8 text, or an error saying where it is not UTF-8."""
    return decode_utf8(sys.stdin.buffer.read(), "standard input")


def add_model_flags(parser: argparse.ArgumentParser, *, several: bool = False) -> None:
    """--model, --tokenizer, --device, --dtype: the flags of every verb that runs a model."""
    parser.add_argument(
        "--model",
        metavar="PATH",
        type=path_text,
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
    set_cpu_threads(args.threads or 1)
    model = load_model(path, device=args.device, dtype=DTYPES[args.dtype], quantize=args.quantize)
    return apply_speed_flags(model, args)


def apply_speed_flags(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """--threads (or the default for this model and machine) and --compile, on a loaded model."""
    set_cpu_threads(args.threads or default_threads(model))
    if args.compile:
        compile_step(model)
    return model


def add_tokenizer_flag(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--tokenizer",
        metavar="NAME",
        type=path_text,
        default=default,
        help='"world", "20b", "byte", a vocabulary file or a .gguf file (its tokenizer)'
        + ("" if default else " (default: the model's own)"),
    )


def add_device_flag(parser: argparse.ArgumentParser, default: str = "cpu") -> None:
    auto = "; auto: the GPU of this rank if there is one, else cpu" if default == "auto" else ""
    parser.add_argument(
        "--device",
        default=default,
        type=device_name if default != "auto" else _auto_or_device,
        help=f"torch device, e.g. cpu, cuda or cuda:1{auto}",
    )


def _auto_or_device(value: str) -> str:
    return value if value == "auto" else device_name(value)


def add_dtype_flag(
    parser: argparse.ArgumentParser,
    help: str,
    default: str | None = "fp32",
    choices: tuple[str, ...] = tuple(DTYPES),
) -> None:
    """--dtype; ``default=None`` means "the source's", said in the help; ``choices`` beyond the torch
    dtypes where the verb writes files (convert: GGUF's q8_0)."""
    keep = " (default: the source's)" if default is None else ""
    parser.add_argument("--dtype", default=default, choices=choices, help=help + keep)


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
        else {"metavar": "FILE", "type": path_text}
    )
    parser.add_argument("--state", help=help, **form)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        metavar="OUT",
        type=path_text,
        help="also write the results to this JSON file (default: no file)",
    )


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar on stderr"
    )


def add_sampling_flags(parser: argparse.ArgumentParser, max_tokens: int) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument(
        "--max-tokens", type=integer(0), default=max_tokens, metavar="N", help="tokens to generate at most"
    )
    # The command's defaults are chosen by measurement (benchmarks/sampling_defaults.py): on the
    # bundled model, T 0.7 / top-p 0.9 gives 96% real words with the plays' variety of word pairs,
    # where T 1 (the model's raw distribution, SamplingParams' default) gives 81%: word salad.
    g.add_argument("--temperature", type=float, default=0.7, metavar="T", help="0 = greedy")
    g.add_argument("--top-p", type=float, default=0.9, metavar="P", help="nucleus sampling; 1 = off")
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
        type=seed,
        default=None,
        metavar="S",
        help="random seed: the same seed gives the same text (default: a fresh one each run)",
    )
    g.add_argument("--stats", action="store_true", help="print speed statistics to stderr")


def sampling_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags as keyword arguments of SamplingParams, checked by it now (before any
    model is loaded): its rules are the only ones, whether a value comes from a flag or from Python."""
    params = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "presence_penalty": args.presence_penalty,
        "frequency_penalty": args.frequency_penalty,
        "penalty_decay": args.penalty_decay,
    }
    SamplingParams(**params)
    return params


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
