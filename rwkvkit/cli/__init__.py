"""The ``rwkvkit`` command: a table of verbs, each one module of this package.

A verb's module is imported only when that verb runs or its help is asked for, so ``rwkvkit``,
``rwkvkit --help`` and ``rwkvkit --version`` import no torch. Each verb module has
``add_arguments(parser)`` (its flags, declared once; the shared ones from :mod:`.flags`) and
``run(args) -> int``. A failure the user can fix is one line on stderr,
``rwkvkit VERB: error: ...``, and exit status 2, for a bad flag and for an RwkvkitError alike.
Anything else is a bug in rwkvkit: one line saying so, exit status 1 (``RWKVKIT_TRACEBACK=1``
shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

from .. import __version__
from ..errors import RwkvkitError


class Verb(NamedTuple):
    module: str
    help: str


VERBS: dict[str, Verb] = {
    "generate": Verb("rwkvkit.cli.generate", "continue a prompt, streaming the text to stdout"),
    "chat": Verb("rwkvkit.cli.chat", "chat with a model; the state carries the conversation"),
    "convert": Verb(
        "rwkvkit.cli.convert", "convert a checkpoint to .pth, .safetensors, HF, rwkv.cpp, GGUF or ONNX"
    ),
    "prepare": Verb("rwkvkit.cli.prepare", "tokenize text, JSONL or binidx files into training token files"),
    "train": Verb("rwkvkit.cli.train", "train an RWKV-4 or RWKV-7 (or a GPT baseline) on prepared tokens"),
    "finetune": Verb(
        "rwkvkit.cli.finetune", "adapt a trained model to new data: LoRA, state tuning or every weight"
    ),
    "eval": Verb("rwkvkit.cli.eval", "perplexity, LAMBADA and multiple-choice scores for one or more models"),
    "bench": Verb("rwkvkit.cli.bench", "measure decode and prefill speed, ours and the peers', side by side"),
    "serve": Verb("rwkvkit.cli.serve", "serve a model over an OpenAI-compatible HTTP API, with a chat page"),
}


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default is argparse.SUPPRESS or action.required:
            return text
        if not action.option_strings and action.nargs != "?":
            return text  # a required positional has no default
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            return f"{text} (default: off)"
        if action.default in (None, "", []):
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line: ``PROG: error: MESSAGE`` (``--help`` shows the usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    """The top-level parser: --help, --version and the verbs with their one-line help (no verb imported)."""
    parser = Parser(
        prog="rwkvkit",
        description="Run, train, evaluate and serve RWKV models. `rwkvkit VERB --help` lists a verb's flags.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rwkvkit {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=Parser)
    for name, verb in VERBS.items():
        sub.add_parser(name, help=verb.help, add_help=False)
    return parser


def verb_parser(name: str) -> Parser:
    """The parser of one verb, its module imported now."""
    module = importlib.import_module(VERBS[name].module)
    parser = Parser(prog=f"rwkvkit {name}", description=VERBS[name].help, formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``rwkvkit VERB [flags]``; bare ``rwkvkit`` prints the help and exits 2 (no verb is a usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in VERBS:
        parser = build_parser()
        if not argv:
            parser.print_help(sys.stderr)
            return 2
        parser.parse_args(argv)  # --help and --version exit 0 here; anything else is a usage error
        return 2
    name = argv[0]
    # A file name that is not UTF-8 reaches Python as lone surrogates; printing it ("wrote NAME")
    # writes its bytes back as they were, instead of failing after the work is done.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="surrogateescape")
    args = verb_parser(name).parse_args(argv[1:])
    module = sys.modules[VERBS[name].module]
    try:
        return int(module.run(args) or 0)
    except RwkvkitError as e:
        print(f"rwkvkit {name}: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rwkvkit generate ... | head`: the reader has all it wanted
        quiet_stdout()
        return 141  # what a shell reports for a process ended by SIGPIPE
    except Exception as e:  # the last resort: every failure a user can cause is an RwkvkitError
        if os.environ.get("RWKVKIT_TRACEBACK"):
            raise
        print(
            f"rwkvkit {name}: error: internal error ({type(e).__name__}: {one_line(str(e))}); this is a bug, "
            "please report it with the command you ran (RWKVKIT_TRACEBACK=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush into the closed pipe does not
    print "Exception ignored ... BrokenPipeError" (the recipe of Python's signal module docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def one_line(message: str) -> str:
    """A message as one line: an error on stderr is one line, whatever the exception text holds."""
    return " ".join(message.split()) if "\n" in message or "\r" in message else message


if __name__ == "__main__":
    sys.exit(main())
