"""``rwkvkit generate``: continue a prompt, streaming the text to stdout."""

from __future__ import annotations

import argparse
import sys

from ..engine import Prefix
from ..errors import RwkvkitError
from ..fileio import check_writable
from ..generate import generate
from ..statefile import load_state, save_state
from .flags import (
    add_model_flags,
    add_sampling_flags,
    add_state_flag,
    load_model_and_tokenizer,
    path_text,
    read_stdin_text,
    sampling_from_args,
    text,
    unescape,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser)
    parser.add_argument(
        "--prompt",
        default="",
        type=text,
        metavar="TEXT",
        help='the text to continue; "-" reads standard input',
    )
    add_sampling_flags(parser, max_tokens=200)
    parser.add_argument(
        "--stop",
        action="extend",
        nargs="+",
        default=[],
        type=text,
        metavar="S",
        help=r"stop before any of these strings (never printed); \n and \t are understood (default: none)",
    )
    add_state_flag(parser, "start from a saved state; the prompt continues it (default: none)")
    parser.add_argument(
        "--save-state",
        metavar="FILE",
        type=path_text,
        help="save the state after the prompt and the generated text (default: not saved)",
    )


def run(args: argparse.Namespace) -> int:
    """Stream the continuation of --prompt to stdout; the text ends with a newline (unless it ends
    with one already, or nothing was generated), so a shell prompt never lands on its last line."""
    sampling = sampling_from_args(args)
    if args.save_state:
        check_writable(args.save_state, "--save-state file")  # now, not after the generation
    prompt = read_stdin_text() if args.prompt == "-" else args.prompt
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
        **sampling,
    )
    out = sys.stdout
    last = ""
    for piece in gen:
        out.write(piece)
        out.flush()
        last = piece
    if last and not last.endswith("\n"):
        out.write("\n")
        out.flush()
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
