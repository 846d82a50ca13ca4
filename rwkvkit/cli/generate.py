"""``rwkvkit generate``: continue a prompt, streaming the text to stdout."""

from __future__ import annotations

import argparse
import sys

from ..engine import Prefix
from ..errors import RwkvkitError
from ..generate import generate
from ..statefile import load_state, save_state
from .flags import (
    add_model_flags,
    add_sampling_flags,
    add_state_flag,
    load_model_and_tokenizer,
    sampling_from_args,
    unescape,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser)
    parser.add_argument(
        "--prompt", default="", metavar="TEXT", help='the text to continue; "-" reads standard input'
    )
    add_sampling_flags(parser, max_tokens=200)
    parser.add_argument(
        "--stop",
        action="extend",
        nargs="+",
        default=[],
        metavar="S",
        help=r"stop before any of these strings (never printed); \n and \t are understood (default: none)",
    )
    add_state_flag(parser, "start from a saved state; the prompt continues it (default: none)")
    parser.add_argument(
        "--save-state",
        metavar="FILE",
        help="save the state after the prompt and the generated text (default: not saved)",
    )


def run(args: argparse.Namespace) -> int:
    """Stream the continuation of --prompt to stdout."""
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    model, tokenizer = load_model_and_tokenizer(args)
    start: Prefix | None = None
    if args.state:
        saved = load_state(args.state, model)
        start = Prefix(saved.state, saved.logits, saved.tokens_consumed)
    if not prompt and start is None:
        raise RwkvkitError("nothing to continue: pass --prompt TEXT (or --prompt - to read standard input)")
    gen = generate(
        model,
        tokenizer,
        prompt,
        max_tokens=args.max_tokens,
        stop=[unescape(s) for s in args.stop],
        seed=args.seed,
        state=start,
        keep_state=bool(args.save_state),
        **sampling_from_args(args),
    )
    out = sys.stdout
    for piece in gen:
        out.write(piece)
        out.flush()
    if out.isatty():
        out.write("\n")
    result = gen.result
    assert result is not None
    if args.save_state:
        before = start.tokens if start is not None else 0
        prefix = result.prefix(before)
        save_state(
            args.save_state,
            prefix.state,
            model,
            tokens_consumed=prefix.tokens,
            logits=prefix.logits,
            tokenizer=tokenizer.name,
        )
    if args.stats:
        print(result.stats(), file=sys.stderr)
    return 0
