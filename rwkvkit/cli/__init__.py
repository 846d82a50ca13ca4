"""The ``rwkvkit`` command. Each subcommand is a module with ``add_arguments`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import RwkvkitError

# subcommand -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": (
        "rwkvkit.convert",
        "convert a checkpoint between .pth, .safetensors, Hugging Face and rwkv.cpp",
    ),
    "bench": ("rwkvkit.bench.contenders", "measure decode and prefill speed, ours and the peers', side by side"),
    "generate": ("rwkvkit.generate", "continue a prompt, streaming the text to stdout"),
    "chat": ("rwkvkit.chat", "chat with a model; the state carries the conversation"),
    "prepare": ("rwkvkit.cli.prepare", "tokenize text, JSONL or binidx files into training token files"),
    "train": ("rwkvkit.cli.train", "train an RWKV-4 or RWKV-7 (or a GPT baseline) on prepared tokens"),
    "eval": ("rwkvkit.eval.scorer", "perplexity, LAMBADA and multiple-choice scores for one or more models"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rwkvkit", description="Run, train, evaluate and serve RWKV models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except RwkvkitError as e:
        print(f"rwkvkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
