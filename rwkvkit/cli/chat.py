"""``rwkvkit chat``: chat on standard input and output, the state carrying the conversation.

Messages are read one per line (typed, or piped in by a script); a line starting with ``/`` is
a command (COMMANDS). The conversation itself is :class:`rwkvkit.chat.Chat`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import BinaryIO, TextIO

import torch

from ..chat import Chat
from ..errors import RwkvkitError
from ..fileio import check_utf8, decode_utf8
from .flags import (
    add_model_flags,
    add_sampling_flags,
    add_state_flag,
    load_model_and_tokenizer,
    sampling_from_args,
    text,
)

COMMANDS = """commands:
  /save FILE   save the conversation state to FILE (safetensors)
  /load FILE   continue a conversation saved with /save
  /reset       forget the conversation (keeps the system prompt)
  /help        this list
  /quit        leave (so does end of input)"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser)
    parser.add_argument(
        "--system",
        type=text,
        metavar="TEXT",
        help="a system prompt, fed once before the first turn (default: none)",
    )
    add_state_flag(parser, "continue a conversation saved with /save (default: a new one)")
    add_sampling_flags(parser, max_tokens=500)


def read_messages(stdin: BinaryIO, interactive: bool, user: str) -> Iterator[str | RwkvkitError]:
    """The lines typed or piped in; a line that is not UTF-8 comes as the error saying so, for the
    session to report and go on (the conversation so far is not lost to one bad line)."""
    n = 0
    while True:
        n += 1
        try:
            if interactive:
                try:
                    line = check_utf8(input(f"{user}: "), "this line")
                except EOFError:
                    print(file=sys.stderr)
                    return
            else:
                raw = stdin.readline()
                if not raw:
                    return
                line = decode_utf8(raw, f"line {n}")
        except RwkvkitError as e:
            yield e
            continue
        yield line.rstrip("\r\n")


def command(chat: Chat, line: str, err: TextIO) -> bool:
    """Run a /command; return False to leave."""
    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    try:
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            print(COMMANDS, file=err)
        elif name == "/reset":
            chat.reset()
            print("conversation reset", file=err)
        elif name in ("/save", "/load"):
            if not arg:
                print(f"usage: {name} FILE", file=err)
            elif name == "/save":
                print(f"saved to {chat.save(arg)}", file=err)
            else:
                chat.load(arg)
                print(f"loaded {arg}", file=err)
        else:
            print(f"unknown command {name}; /help lists the commands", file=err)
    except RwkvkitError as e:
        print(f"error: {e}", file=err)
    return True


def run(args: argparse.Namespace) -> int:
    """Chat on standard input and output; scripts can pipe messages in, one per line."""
    sampling = sampling_from_args(args)
    model, tokenizer = load_model_and_tokenizer(args)
    chat = Chat(
        model,
        tokenizer,
        system=args.system,
        max_tokens=args.max_tokens,
        seed=args.seed,
        **sampling,
    )
    if args.state:
        chat.load(args.state)
    interactive = sys.stdin.isatty()
    out, err = sys.stdout, sys.stderr
    if interactive:
        # input() would end the session on bytes that are not UTF-8: let them through, then refuse them
        sys.stdin.reconfigure(errors="surrogateescape")  # type: ignore[attr-defined]
        print("rwkvkit chat: /help lists the commands, /quit or Ctrl-D leaves", file=err)
    for line in read_messages(sys.stdin.buffer, interactive, chat.user):
        if isinstance(line, RwkvkitError):
            print(f"error: {line}; the message was not sent", file=err)
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            if not command(chat, line, err):
                break
            continue
        out.write(f"{chat.assistant}: ")
        out.flush()
        try:
            with torch.no_grad():
                for piece in chat.send(line):
                    out.write(piece)
                    out.flush()
        except KeyboardInterrupt:
            if not interactive:
                raise
            out.write(" [interrupted: this turn is forgotten]")  # send() had not moved the state yet
        out.write("\n\n" if interactive else "\n")
        out.flush()
        if args.stats and chat.last is not None:
            print(chat.last.stats(), file=err)
    return 0
