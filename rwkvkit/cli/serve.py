"""``rwkvkit serve``: an OpenAI-compatible HTTP server and a chat page (see :mod:`rwkvkit.serve`)."""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from ..defaults import default_model_path
from ..device import set_cpu_threads
from ..errors import RwkvkitError
from .flags import (
    add_model_flags,
    add_state_flag,
    load_model_and_tokenizer,
    named_path,
    nonempty_text,
    path_text,
)

BUNDLED_NAME = "rwkvkit-default"
MAX_TOKENS_HELP = "most tokens one choice may generate (and chat's default max_tokens)"
SHUTDOWN_HELP = "on SIGTERM, seconds the running requests get to finish; then they end with a 503"


def at_least(lo: int | float, kind: type = int) -> Callable[[str], int | float]:
    def check(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a{'n integer' if kind is int else ' number'}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if value < lo:
            raise argparse.ArgumentTypeError(f"{text} is below {lo}")
        return value

    check.__name__ = kind.__name__
    return check


def port(text: str) -> int:
    value = at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0..65535)")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser)  # with --quantize, --threads and --compile
    g = parser.add_argument_group(
        "tuned variants: each its own model name in /v1/models, on the base's weights"
    )
    g.add_argument(
        "--adapter",
        type=named_path,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve the base with this LoRA adapter (a PEFT folder or a LoRA run) as model NAME; repeatable "
        "(default: none)",
    )
    add_state_flag(
        g,
        "serve the base starting from this state (a state file, an official time_state .pth or a "
        "state-tuning run) as model NAME; repeatable (default: none)",
        named=True,
    )
    g = parser.add_argument_group("network")
    g.add_argument(
        "--host",
        default="127.0.0.1",
        type=nonempty_text,
        help="address to listen on; 0.0.0.0 opens it to the network",
    )
    g.add_argument(
        "--port", type=port, default=8000, help="port; 0 picks a free one (the address is printed)"
    )
    g.add_argument(
        "--api-key",
        metavar="KEY",
        type=nonempty_text,  # `--api-key "$UNSET"` must not open the server to everyone
        default=os.environ.get("RWKVKIT_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on /v1/* (default: $RWKVKIT_API_KEY, else no key)",
    )
    g.add_argument(
        "--model-name",
        metavar="NAME",
        type=nonempty_text,
        help=f"the model's name in the API (default: the checkpoint's file name, or {BUNDLED_NAME})",
    )
    g = parser.add_argument_group("limits")
    g.add_argument(
        "--max-batch", type=at_least(1), default=8, metavar="N", help="rows decoded in one model call"
    )
    g.add_argument(
        "--max-queue", type=at_least(0), default=64, metavar="N", help="rows waiting beyond; more: 429"
    )
    g.add_argument("--max-prompt-tokens", type=at_least(1), default=32768, metavar="N", help="longest prompt")
    g.add_argument("--max-tokens-limit", type=at_least(1), default=4096, metavar="N", help=MAX_TOKENS_HELP)
    g.add_argument(
        "--state-cache-mb",
        type=at_least(0, float),
        default=256.0,
        metavar="MB",
        help="memory for the prefix state cache; 0 turns it off",
    )
    g.add_argument(
        "--prefill-chunk", type=at_least(1), default=256, metavar="N", help="prompt tokens per model call"
    )
    g = parser.add_argument_group("process")
    g.add_argument(
        "--chat-template",
        metavar="FILE",
        type=path_text,
        help='a JSON file of chat names, e.g. {"user": "Q", "assistant": "A", "turn_end": "\\n\\n"} '
        "(default: the RWKV World format, User:/Assistant:)",
    )
    g.add_argument(
        "--shutdown-timeout", type=at_least(0, float), default=10.0, metavar="S", help=SHUTDOWN_HELP
    )
    g.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="the server's log (info shows each request)",
    )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound now so that a busy port is a one-line error and port 0 is known."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(2048)
    except OSError as e:
        raise RwkvkitError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --host or --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def add_tuned_variants(registry: Any, adapters: list[tuple[str, str]], states: list[tuple[str, str]]) -> None:
    """Each --state NAME=PATH and --adapter NAME=PATH as its own model on the base's weights: a
    state variant starts every request from its state, an adapter variant is a view of the base
    with the adapter's LoRA layers on top (rwkvkit.lora.adapter_view)."""
    from ..engine import Prefix
    from ..serve.registry import Variant
    from ..statefile import load_initial_state

    base = registry.base.model
    for name, path in states:
        start = Prefix(load_initial_state(path, base), None, 0)
        registry.add(Variant(name, base, kind="state", start=start))
    if adapters:
        from ..lora import adapter_view  # imports peft, which only adapters need

        for name, path in adapters:
            registry.add(Variant(name, adapter_view(base, path), kind="adapter"))


def run(args: argparse.Namespace) -> int:
    """Serve the model until SIGTERM or Ctrl-C."""
    import uvicorn

    from ..serve.app import ServeConfig, create_app
    from ..serve.registry import Registry
    from ..serve.schemas import read_template

    template = read_template(args.chat_template) if args.chat_template else None
    if args.threads:
        set_cpu_threads(args.threads)
    sock = listen(args.host, args.port)  # before loading: a busy port fails fast
    model, tokenizer = load_model_and_tokenizer(args)
    name = args.model_name or (
        BUNDLED_NAME if not args.model and default_model_path() else Path(args.model).stem
    )
    limits = ServeConfig(
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens_limit=args.max_tokens_limit,
        state_cache_mb=args.state_cache_mb,
        prefill_chunk=args.prefill_chunk,
        api_key=args.api_key or None,
    )
    registry = Registry(model, tokenizer, name, template)
    add_tuned_variants(registry, args.adapter, args.state)
    app = create_app(registry, limits)
    host, bound = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
    print(f"rwkvkit serve: {name} at {url} (chat page {url}/, API {url}/v1)", file=sys.stderr, flush=True)
    scheduler = app.state.server.scheduler

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            """SIGTERM is how a service manager stops a server: after a clean shutdown, exit 0
            (uvicorn would raise the signal again and die by it; Ctrl-C still exits 130)."""
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", [])
            captured[:] = [s for s in captured if s != signal.SIGTERM]

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            """SIGTERM or Ctrl-C: running requests get --shutdown-timeout seconds, then a 503."""
            scheduler.drain(args.shutdown_timeout)
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        access_log=args.log_level in ("info", "debug"),
        timeout_graceful_shutdown=args.shutdown_timeout + 5,  # a backstop: the scheduler ends them first
    )
    Server(config).run(sockets=[sock])
    return 0
