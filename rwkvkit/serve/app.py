"""The HTTP side: routes, OpenAI's response and stream shapes, the API key, the page.

Routes: ``GET /`` (the chat page), ``GET /health``, ``GET /metrics`` (Prometheus text),
``GET /v1/models`` and ``/v1/models/{id}``, ``POST /v1/completions``, ``POST /v1/chat/completions``.
A request is checked (:mod:`.schemas`), tokenized and handed to the :class:`~.scheduler.Scheduler`
as one :class:`~.scheduler.Job` per choice; this side then only formats what comes back: one JSON
object, or server-sent events ending with ``data: [DONE]``. A client that goes away mid-request
has its rows cancelled before the next engine step.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import importlib.resources
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..engine import Request
from ..sampling import make_generator
from .chatformat import encode_chat
from .jsonmode import JsonObjectConstraint
from .metrics import Metrics
from .registry import Registry, Variant
from .scheduler import Admitted, Failed, Finished, Job, Piece, PromptScores, Scheduler, Sink, TokenLogprob
from .schemas import ApiError, Fields, Generation, bad, parse_json, read_chat, read_completion

FINGERPRINT = f"rwkvkit-{__version__}"
ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """The limits of ``rwkvkit serve`` (its flags)."""

    max_batch: int = 8  # rows decoded in one model call
    max_queue: int = 64  # rows waiting beyond those; more get 429 at once
    max_prompt_tokens: int = 32768
    max_tokens_limit: int = 4096  # the most tokens one choice may ask for (and chat's default)
    state_cache_mb: float = 256.0
    prefill_chunk: int = 256
    api_key: str | None = None

    @property
    def body_limit(self) -> int:
        """Request bytes read at most: room for the longest prompt, JSON-escaped, and the rest."""
        return 65536 + 32 * self.max_prompt_tokens


class ClientGone(Exception):
    """The client closed the connection while its request ran."""


# --------------------------------------------------------------------------------------------
# The server: what the routes share


class Server:
    def __init__(self, registry: Registry, config: ServeConfig) -> None:
        self.registry, self.config = registry, config
        self.tokenizer = registry.tokenizer
        self.metrics = Metrics()
        self.scheduler = Scheduler(
            registry,
            self.metrics,
            max_batch=config.max_batch,
            max_queue=config.max_queue,
            prefill_chunk=config.prefill_chunk,
            cache_bytes=int(config.state_cache_mb * 2**20),
        )
        model_config = getattr(registry.base.model, "config", None)
        self.vocab_size: int = getattr(model_config, "vocab_size", None) or self.tokenizer.vocab_size
        self.context: int | None = getattr(model_config, "n_ctx", None)
        self._token_bytes: list[bytes] | None = None
        cache, sched = self.scheduler.cache, self.scheduler
        for name, kind, help, read in [
            (
                "rwkvkit_queue_depth",
                "gauge",
                "rows admitted and not yet decoding",
                lambda: max(0, sched.rows - sched.decoding),  # (a cache-filling row is not a client's)
            ),
            ("rwkvkit_active_rows", "gauge", "rows decoding", lambda: sched.decoding),
            (
                "rwkvkit_prefix_cache_hits_total",
                "counter",
                "prompts that started from a cached state",
                lambda: cache.stats.hits,
            ),
            (
                "rwkvkit_prefix_cache_misses_total",
                "counter",
                "prompts with no cached prefix",
                lambda: cache.stats.misses,
            ),
            (
                "rwkvkit_prefix_cache_evictions_total",
                "counter",
                "states evicted",
                lambda: cache.stats.evictions,
            ),
            ("rwkvkit_prefix_cache_entries", "gauge", "states held", lambda: len(cache)),
            ("rwkvkit_prefix_cache_bytes", "gauge", "bytes of the states held", lambda: cache.bytes),
            (
                "rwkvkit_prefix_cache_capacity_bytes",
                "gauge",
                "the cache's budget",
                lambda: cache.capacity_bytes,
            ),
        ]:
            self.metrics.watch(name, kind, help, read)

    # -- turning requests into jobs ---------------------------------------------------------------

    def token_bytes(self) -> list[bytes]:
        """Every token's bytes (JSON mode checks them), computed once."""
        if self._token_bytes is None:
            table = []
            for i in range(self.vocab_size):
                try:
                    table.append(self.tokenizer.decode_bytes([i]) if i < self.tokenizer.vocab_size else b"")
                except Exception:  # a special token the tokenizer cannot spell
                    table.append(b"")
            self._token_bytes = table
        return self._token_bytes

    def prompt_ids(self, prompt: str | list[int], variant: Variant, param: str) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = prompt
            bad_ids = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad_ids:
                raise bad(
                    f"{param} has token id {bad_ids[0]}, outside the vocabulary (0..{self.vocab_size - 1})",
                    param,
                )
        limit = self.config.max_prompt_tokens
        if len(ids) > limit:
            raise bad(
                f"the {param} has {len(ids)} tokens, over this server's limit of {limit} (--max-prompt-tokens); "
                "shorten it",
                param,
                "context_length_exceeded",
            )
        if self.context is not None and variant.start_tokens + len(ids) >= self.context:
            raise bad(
                f"the {param} has {len(ids)} tokens; this model reads at most {self.context}",
                param,
                "context_length_exceeded",
            )
        if not ids and (variant.start is None or variant.start.logits is None):
            raise bad(f"the {param} is empty; give at least one token of text", param)
        return ids

    def jobs(
        self,
        variant: Variant,
        prompts: Sequence[list[int]],
        gen: Generation,
        *,
        chat: bool,
        json_mode: bool = False,
        score_prompt: bool = False,
    ) -> list[Job]:
        """One leader per prompt; its other n - 1 choices start from its prompt state. Choice j of
        a prompt samples with seed + j, so each is what a request with that seed gives alone."""
        device = next(variant.model.parameters()).device
        eos = getattr(self.tokenizer, "eos_id", None)
        stop = [self.registry.template.turn_end, *gen.stop] if chat else gen.stop
        leaders = []
        for p, ids in enumerate(prompts):
            group = []
            for j in range(gen.n):
                seed = None if gen.seed is None else (gen.seed + j) % 2**64
                ends = [] if eos is None else [eos]
                raised = [t for t, b in gen.params.logit_bias.items() if b > 0]
                constraint = JsonObjectConstraint(self.token_bytes(), ends, raised) if json_mode else None
                request = Request(
                    params=gen.params,
                    max_tokens=gen.max_tokens,
                    stop_token_ids=ends,
                    generator=make_generator(seed, device),
                    logprobs=gen.logprobs,
                    constraint=constraint,
                    prompt_logprobs=gen.logprobs if score_prompt and j == 0 else None,  # the others copy it
                )
                group.append(Job(p * gen.n + j, variant, ids, request, stop, chat=chat, json=constraint))
            group[0].followers = group[1:]
            leaders.append(group[0])
        return leaders

    def token_text(self, token: int) -> str:
        data = self.tokenizer.decode_bytes([token])
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:  # part of a character: OpenAI spells it as bytes
            return "bytes:" + "".join(f"\\x{b:02x}" for b in data)

    # -- running them ---------------------------------------------------------------------------

    async def respond(
        self, request: HttpRequest, leaders: list[Job], shape: Shape, gen: Generation
    ) -> Response:
        sink = Sink(asyncio.get_running_loop())
        everyone = [job for lead in leaders for job in (lead, *lead.followers)]
        for job in everyone:
            job.sink = sink
        reply = Reply(self, shape, sink, leaders, len(everyone), gen)
        self.scheduler.submit(leaders)
        try:
            await until_disconnect(request, reply.admitted())
        except ClientGone:
            self.scheduler.cancel(leaders)
            return Response(status_code=499)
        except ApiError:
            self.scheduler.cancel(leaders)
            raise
        self.metrics.prompt(sum(len(j.ids) for j in leaders), sum(reply.cached.values()))
        if gen.stream:
            return StreamingResponse(
                reply.stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        try:
            return JSONResponse(await until_disconnect(request, reply.whole()))
        except ClientGone:
            self.scheduler.cancel(leaders)
            return Response(status_code=499)


async def until_disconnect(request: HttpRequest, work: Any) -> Any:
    """Await ``work``, unless the client closes the connection first (then ClientGone)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ClientGone


# --------------------------------------------------------------------------------------------
# OpenAI's shapes


class Shape:
    """How one route writes its response and its stream chunks."""

    object = ""
    chunk_object = ""
    prefix = ""

    def __init__(self, server: Server, model: str) -> None:
        self.server, self.model = server, model
        self.id = f"{self.prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
        }

    def opening(self, index: int) -> dict[str, Any] | None:
        """A first chunk for a choice, before any text (None: none)."""
        return None

    def delta(self, index: int, text: str, logprobs: Any, finish: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def choice(self, index: int, text: str, logprobs: Any, finish: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def logprobs(self, index: int, entries: list[TokenLogprob]) -> Any:
        raise NotImplementedError

    def join_logprobs(self, parts: list[Any]) -> Any:
        raise NotImplementedError


class CompletionShape(Shape):
    object = chunk_object = "text_completion"
    prefix = "cmpl"

    def __init__(self, server: Server, model: str, echoes: list[str], scored: bool) -> None:
        super().__init__(server, model)
        self.echoes = echoes  # per choice: the prompt text sent before the completion ("" without echo)
        self.scored = scored  # the echoed prompt comes with its logprobs, once they are computed
        self.offsets = [0 if scored else len(e) for e in echoes]

    def opening(self, index: int) -> dict[str, Any] | None:
        if self.scored or not self.echoes[index]:
            return None
        return self.delta(index, self.echoes[index], None, None)

    def delta(self, index: int, text: str, logprobs: Any, finish: str | None) -> dict[str, Any]:
        return {**self.head(self.chunk_object), "choices": [self.choice(index, text, logprobs, finish)]}

    def choice(self, index: int, text: str, logprobs: Any, finish: str | None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def logprobs(self, index: int, entries: list[TokenLogprob]) -> Any:
        tokens, offsets = [], []
        for e in entries:
            tokens.append(self.server.token_text(e.token))
            offsets.append(self.offsets[index])
            self.offsets[index] += len(tokens[-1])
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [
                None if e.logprob is None else {self.server.token_text(t): lp for t, lp in e.top}
                for e in entries
            ],
            "text_offset": offsets,
        }

    def join_logprobs(self, parts: list[Any]) -> Any:
        return {
            key: [x for p in parts for x in p[key]]
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")
        }


class ChatShape(Shape):
    object, chunk_object = "chat.completion", "chat.completion.chunk"
    prefix = "chatcmpl"

    def opening(self, index: int) -> dict[str, Any] | None:
        return self._chunk(index, {"role": "assistant", "content": ""}, None, None)

    def delta(self, index: int, text: str, logprobs: Any, finish: str | None) -> dict[str, Any]:
        return self._chunk(index, {"content": text} if text else {}, logprobs, finish)

    def _chunk(self, index: int, delta: dict[str, Any], logprobs: Any, finish: str | None) -> dict[str, Any]:
        return {
            **self.head(self.chunk_object),
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        }

    def choice(self, index: int, text: str, logprobs: Any, finish: str | None) -> dict[str, Any]:
        message = {"role": "assistant", "content": text, "refusal": None}
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        return {
            "token": self.server.token_text(token),
            "logprob": logprob,
            "bytes": list(self.server.tokenizer.decode_bytes([token])),
        }

    def logprobs(self, index: int, entries: list[TokenLogprob]) -> Any:
        return {
            "content": [
                {**self._entry(e.token, e.logprob), "top_logprobs": [self._entry(t, lp) for t, lp in e.top]}
                for e in entries
            ]
        }

    def join_logprobs(self, parts: list[Any]) -> Any:
        return {"content": [x for p in parts for x in p["content"]]}


# --------------------------------------------------------------------------------------------
# Gathering what the scheduler sends


@dataclasses.dataclass
class Choice:
    texts: list[str] = dataclasses.field(default_factory=list)
    logprobs: list[Any] = dataclasses.field(default_factory=list)
    finish: str | None = None
    tokens: int = 0


class Reply:
    """One request's items from its sink, as one response or as a stream of chunks."""

    def __init__(
        self, server: Server, shape: Shape, sink: Sink, leaders: list[Job], n: int, gen: Generation
    ) -> None:
        self.server, self.shape, self.sink, self.gen = server, shape, sink, gen
        self.leaders = {j.index: j for j in leaders}
        # a prompt's choices: its leader's and its followers' indices
        self.group = {j.index: [j.index] + [f.index for f in j.followers] for j in leaders}
        self.choices = {i: Choice() for i in range(n)}
        self.cached: dict[int, int] = {}
        self.early: list[Any] = []  # items that came while waiting for the leaders to get in
        self.with_logprobs = gen.logprobs is not None

    async def admitted(self) -> None:
        """Wait until every prompt is in the engine (or raise the error that kept one out)."""
        while len(self.cached) < len(self.leaders):
            item = await self.sink.queue.get()
            if isinstance(item, Admitted):
                if item.index in self.leaders:
                    self.cached[item.index] = item.cached
            elif isinstance(item, Failed):
                raise item.error
            else:
                self.early.append(item)

    async def items(self) -> AsyncIterator[Any]:
        """The items until every choice has finished (the early ones first); an error is raised."""
        early, self.early = self.early, []
        while early or any(c.finish is None for c in self.choices.values()):
            item = early.pop(0) if early else await self.sink.queue.get()
            if isinstance(item, Failed):
                raise item.error
            if isinstance(item, PromptScores):  # a prompt's scores are every one of its choices'
                for index in self.group[item.index]:
                    yield dataclasses.replace(item, index=index)
            elif not isinstance(item, Admitted):
                yield item

    def _take(self, item: Piece | Finished | PromptScores) -> tuple[str, Any, str | None]:
        """Record an item; (its text, its logprobs in the route's shape, finish reason or None)."""
        choice = self.choices[item.index]
        lp = self.shape.logprobs(item.index, item.logprobs) if self.with_logprobs else None
        text = self.shape.echoes[item.index] if isinstance(item, PromptScores) else item.text  # type: ignore[attr-defined]
        choice.texts.append(text)
        if lp is not None:
            choice.logprobs.append(lp)
        if isinstance(item, Finished):
            choice.finish, choice.tokens = item.reason, item.completion_tokens
            return text, lp, item.reason
        return text, lp, None

    def usage(self) -> dict[str, Any]:
        prompt = sum(len(j.ids) for j in self.leaders.values())
        completion = sum(c.tokens for c in self.choices.values())
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(self.cached.values())},
        }

    async def whole(self) -> dict[str, Any]:
        async for item in self.items():
            self._take(item)
        echoes = None if getattr(self.shape, "scored", False) else getattr(self.shape, "echoes", None)
        choices = []  # (a scored echo came as the first item's text)
        for i, c in sorted(self.choices.items()):
            text = (echoes[i] if echoes else "") + "".join(c.texts)
            lp = self.shape.join_logprobs(c.logprobs) if self.with_logprobs else None
            choices.append(self.shape.choice(i, text, lp, c.finish))
        return {**self.shape.head(self.shape.object), "choices": choices, "usage": self.usage()}

    async def stream(self) -> AsyncIterator[str]:
        done = False
        extra = {"usage": None} if self.gen.include_usage else {}
        try:
            for i in sorted(self.choices):
                first = self.shape.opening(i)
                if first is not None:
                    yield sse({**first, **extra})
            try:
                async for item in self.items():
                    text, lp, finish = self._take(item)
                    if text or lp or finish:
                        yield sse({**self.shape.delta(item.index, text, lp, finish), **extra})
            except ApiError as e:
                yield sse(e.body())
            else:
                if self.gen.include_usage:
                    yield sse(
                        {**self.shape.head(self.shape.chunk_object), "choices": [], "usage": self.usage()}
                    )
            yield "data: [DONE]\n\n"
            done = True
        finally:
            if not done:  # the client went away (or the server is stopping): free the rows
                self.server.scheduler.cancel(list(self.leaders.values()))


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


# --------------------------------------------------------------------------------------------
# Routes


def server_of(request: HttpRequest) -> Server:
    return request.app.state.server


async def read_body(request: HttpRequest, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body has {declared} bytes; this server reads at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit} bytes, this server's limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_fields(request: HttpRequest) -> Fields:
    return Fields(parse_json(await read_body(request, server_of(request).config.body_limit)))


def limits(server: Server) -> dict[str, int]:
    return {"max_tokens_limit": server.config.max_tokens_limit, "vocab_size": server.vocab_size}


async def completions(request: HttpRequest) -> Response:
    server = server_of(request)
    body = read_completion(await read_fields(request), **limits(server))
    variant = server.registry.get(body.gen.model)
    prompts = [server.prompt_ids(p, variant, "prompt") for p in body.prompts]
    echoes = [server.tokenizer.decode(ids) if body.echo else "" for ids in prompts for _ in range(body.gen.n)]
    scored = body.echo and body.gen.logprobs is not None  # the prompt's logprobs too (for scoring text)
    leaders = server.jobs(variant, prompts, body.gen, chat=False, score_prompt=scored)
    shape = CompletionShape(server, variant.name, echoes, scored)
    return await server.respond(request, leaders, shape, body.gen)


async def chat_completions(request: HttpRequest) -> Response:
    server = server_of(request)
    body = read_chat(await read_fields(request), **limits(server))
    variant = server.registry.get(body.gen.model)
    ids = server.prompt_ids(
        encode_chat(server.tokenizer, server.registry.template, body.messages), variant, "messages"
    )
    leaders = server.jobs(variant, [ids], body.gen, chat=True, json_mode=body.json_mode)
    return await server.respond(request, leaders, ChatShape(server, variant.name), body.gen)


async def models(request: HttpRequest) -> Response:
    return JSONResponse(server_of(request).registry.listing())


async def model(request: HttpRequest) -> Response:
    return JSONResponse(server_of(request).registry.get(request.path_params["model_id"]).card())


async def health(request: HttpRequest) -> Response:
    server = server_of(request)
    return JSONResponse({"status": "ok", "model": server.registry.base.name, "rows": server.scheduler.rows})


async def metrics(request: HttpRequest) -> Response:
    return PlainTextResponse(server_of(request).metrics.render(), media_type="text/plain; version=0.0.4")


def page_html() -> str:
    return (
        importlib.resources.files("rwkvkit.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    )


async def page(request: HttpRequest) -> Response:
    return HTMLResponse(request.app.state.page)


# --------------------------------------------------------------------------------------------
# Errors, the API key, request counts


async def api_error(request: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"Retry-After": "1"} if exc.status == 429 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def http_error(request: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    what = "no such route" if exc.status_code == 404 else exc.detail
    error = ApiError(
        exc.status_code, f"{request.method} {request.url.path}: {what}", code=str(exc.status_code)
    )
    return JSONResponse(error.body(), status_code=exc.status_code)


async def internal_error(request: HttpRequest, exc: Exception) -> Response:
    error = ApiError(500, "the server failed on this request; see its log", type="server_error")
    return JSONResponse(error.body(), status_code=500)


class Gate:
    """ASGI middleware: the API key on ``/v1/*`` (``Authorization: Bearer KEY``), and every
    response's status counted by route for ``/metrics``."""

    def __init__(self, app: ASGIApp, api_key: str | None, count: Callable[[str, int], None]) -> None:
        self.app, self.api_key, self.count = app, api_key, count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.api_key and path.startswith("/v1") and not self._allowed(scope):
                error = ApiError(
                    401,
                    "a valid API key is required: send the header Authorization: Bearer KEY",
                    code="invalid_api_key",
                )
                await JSONResponse(error.body(), status_code=401)(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            route = (
                path if path in ROUTES else "/v1/models/{id}" if path.startswith("/v1/models/") else "other"
            )
            self.count(route, status)

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, key = header.partition(b" ")
        assert self.api_key is not None
        return scheme.lower() == b"bearer" and hmac.compare_digest(key.strip(), self.api_key.encode())


def create_app(registry: Registry, config: ServeConfig) -> Starlette:
    """The ASGI app; the scheduler's thread runs from startup to shutdown (its lifespan)."""
    server = Server(registry, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.scheduler.start()
        try:
            yield
        finally:
            server.scheduler.close()

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/v1/models", models),
            Route("/v1/models/{model_id:path}", model),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    app.state.server = server
    app.state.page = page_html()
    app.add_middleware(Gate, api_key=config.api_key, count=server.metrics.request)
    return app
