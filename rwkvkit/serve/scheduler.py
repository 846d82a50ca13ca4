"""The scheduler: the one thread that drives the model, and the queues the requests use to reach it.

The engine is not thread-safe and the model must be driven from one thread, so every request
talks to this thread through a queue (:meth:`Scheduler.submit`, :meth:`Scheduler.cancel`), and
the thread answers through each request's :class:`Sink` (an asyncio queue filled with
``call_soon_threadsafe``). Between two engine steps the thread

1. admits new rows: the prefix cache gives the longest cached start of each prompt, and the row
   reads only the rest (``cached_tokens``);
2. cancels the rows whose clients went away (so a row is freed within one step);
3. steps each engine with work: prefill in chunks, one batched decode;
4. turns the events into text through each row's :class:`~rwkvkit.generate.TextStream` (whole
   characters, stop strings held back and never sent), and keeps the states the cache wants: at
   the prefill chunk boundaries, at the prompt's end, and after a chat reply (the state the next
   turn of that conversation starts from).

A request with ``n`` > 1 choices reads its prompt once: the first row prefills it, the others
start from its state. Every row samples with its own generator, so a seeded row gives the same
text whatever else runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from typing import Any

from ..engine import CANCELLED, CONTEXT_FULL, MAX_TOKENS, Engine, Event, Prefix, Request, RowResult
from ..errors import RwkvkitError
from ..generate import TextStream
from .cache import PrefixCache
from .chatformat import reply_ids
from .jsonmode import JsonObjectConstraint
from .metrics import Metrics
from .registry import Registry, Variant
from .schemas import ApiError

log = logging.getLogger("rwkvkit.serve")


# --------------------------------------------------------------------------------------------
# What the scheduler sends back


@dataclasses.dataclass
class TokenLogprob:
    token: int
    logprob: float | None  # None: a prompt's first token, which nothing came before
    top: list[tuple[int, float]]  # the most likely ids and their logprobs, best first


@dataclasses.dataclass
class PromptScores:
    """(echo with logprobs) the logprobs of some of the prompt's tokens, in order."""

    index: int
    logprobs: list[TokenLogprob]


@dataclasses.dataclass
class Admitted:
    """The row is in the engine; ``cached`` prompt tokens came from the prefix cache."""

    index: int
    cached: int


@dataclasses.dataclass
class Piece:
    index: int
    text: str
    logprobs: list[TokenLogprob]  # of the tokens since the last piece


@dataclasses.dataclass
class Finished:
    index: int
    reason: str  # OpenAI's finish_reason: "stop" or "length"
    text: str  # the last of the text
    logprobs: list[TokenLogprob]
    completion_tokens: int


@dataclasses.dataclass
class Failed:
    index: int
    error: ApiError


class Sink:
    """Hands one request's items from the scheduler's thread to the coroutine that awaits them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is listening any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


@dataclasses.dataclass(eq=False)
class Job:
    """One row: one choice of one request (or, without a sink, a state the cache wants)."""

    index: int  # the choice's index in the response
    variant: Variant
    ids: list[int]  # the whole prompt
    request: Request  # how to sample and stop; the scheduler sets its prompt and start
    stop: list[str]  # stop strings
    sink: Sink | None = None
    chat: bool = False  # a chat reply: no leading space; the state after it is cached
    json: JsonObjectConstraint | None = None  # JSON mode: the row ends when the object closes
    followers: list[Job] = dataclasses.field(default_factory=list)  # start from this row's prompt state
    # kept by the scheduler
    rid: int | None = None
    text: TextStream | None = None
    prompt_end: Prefix | None = None
    pending: list[TokenLogprob] = dataclasses.field(default_factory=list)
    admitted_at: float = 0.0
    produced: int = 0
    leading: bool = True  # no text sent yet (a chat reply's leading spaces are dropped)
    released: bool = False  # its place in the queue is given back
    dropped: bool = False  # cancelled before it got in


# --------------------------------------------------------------------------------------------
# The scheduler


class Scheduler:
    """Owns the engines (one per distinct model: the base, and any adapter variants) and the cache."""

    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        *,
        max_batch: int,
        max_queue: int,
        prefill_chunk: int,
        cache_bytes: int,
    ) -> None:
        self.registry, self.metrics = registry, metrics
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self.capacity = max_batch + max_queue  # rows running or waiting; more are refused at once
        self.cache = PrefixCache(cache_bytes)
        self.engines: dict[int, Engine] = {}
        self._jobs: dict[tuple[int, int], Job] = {}  # (engine, row) -> job
        self._inbox: queue.SimpleQueue[tuple[str, list[Job]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._rows = 0  # client rows admitted and not yet given back
        self._closing = False
        self._deadline: float | None = None  # (draining) when the rows still running are ended
        self._thread = threading.Thread(target=self._run, name="rwkvkit-scheduler", daemon=True)
        for variant in registry.variants.values():
            self._engine(variant)

    # -- the requests' side (any thread) --------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def drain(self, seconds: float) -> None:
        """Stop taking requests (503); rows still running ``seconds`` from now end with a 503 error."""
        with self._lock:
            self._closing = True
            self._deadline = time.monotonic() + seconds
        self._inbox.put(("wake", []))

    def close(self, timeout: float = 10.0) -> None:
        """Cancel whatever still runs, and stop the thread."""
        with self._lock:
            self._closing = True
        self._inbox.put(("close", []))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, jobs: list[Job]) -> None:
        """Queue the rows of one request (their followers included), or refuse them all at once."""
        n = sum(1 + len(j.followers) for j in jobs)
        with self._lock:
            if self._closing:
                raise ApiError(503, "the server is shutting down; retry on another", type="server_error")
            if self._rows + n > self.capacity:
                raise ApiError(
                    429,
                    f"the server is busy: {self._rows} rows are running or queued (at most {self.capacity}); "
                    "retry later",
                    type="rate_limit_error",
                    code="queue_full",
                )
            self._rows += n
        now = time.perf_counter()
        for j in jobs:
            for job in (j, *j.followers):
                job.admitted_at = now
        self._inbox.put(("add", jobs))

    def cancel(self, jobs: list[Job]) -> None:
        """The client went away: drop its rows before the next step."""
        self._inbox.put(("cancel", jobs))

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def decoding(self) -> int:
        return sum(e.num_decoding for e in list(self.engines.values()))

    # -- the thread -----------------------------------------------------------------------------

    def _engine(self, variant: Variant) -> Engine:
        key = id(variant.model)
        if key not in self.engines:
            self.engines[key] = Engine(
                variant.model, prefill_chunk=self.prefill_chunk, max_batch=self.max_batch
            )
        return self.engines[key]

    def _run(self) -> None:
        while True:
            busy = any(e.has_work for e in self.engines.values())
            try:
                command = self._inbox.get(block=not busy)
                while True:
                    if not self._command(*command):
                        self._cancel_everything()
                        return
                    command = self._inbox.get_nowait()
            except queue.Empty:
                pass
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self._cancel_everything()
            for key, engine in list(self.engines.items()):
                if not engine.has_work:
                    continue
                try:
                    events = engine.step()
                except Exception:  # a bug or out of memory: fail its rows, keep serving
                    log.exception("the engine failed; its requests get an error")
                    self._fail_engine(key, engine)
                    continue
                for event in events:
                    self._event(key, engine, event)

    def _command(self, what: str, jobs: list[Job]) -> bool:
        if what == "close":
            return False
        if what == "add":
            for job in jobs:
                self._admit(job)
        elif what == "cancel":
            for j in jobs:
                for job in (j, *j.followers):
                    self._drop(job)
        return True

    def _admit(self, job: Job, start: Prefix | None = None, read: int = 0) -> None:
        """Put a row in its engine, from ``start`` having read ``read`` of its ids (a follower: its
        leader's prompt state; a cached reply: the prompt's), else from the longest cached prefix."""
        if job.dropped:
            return
        engine = self._engine(job.variant)
        scoring = job.request.prompt_logprobs is not None  # every prompt token must be read
        if start is None and self.cache.capacity_bytes and job.sink is not None and not scoring:
            read, start = self.cache.lookup(job.ids, job.variant.name)
        if start is None:
            start, read = job.variant.start, 0
        request = dataclasses.replace(
            job.request, prompt=job.ids[read:], start=start, keep_prompt_states=True, keep_state=job.chat
        )
        try:
            rid = engine.add(request)
        except RwkvkitError as e:
            for j in (job, *job.followers):
                self._fail(j, ApiError(400, str(e), param="prompt"))
            return
        job.rid, job.text = rid, TextStream(self.registry.tokenizer, job.stop)
        self._jobs[id(job.variant.model), rid] = job
        if job.sink is not None:
            job.sink.put(Admitted(job.index, read))
        if read == len(job.ids):
            job.prompt_end = start
            self._release_followers(job)

    def _release_followers(self, job: Job) -> None:
        """The leader's prompt is read: its followers start from that state (once; the list stays,
        so that cancelling the request reaches them)."""
        for f in job.followers:
            if f.rid is None:
                self._admit(f, job.prompt_end, len(f.ids))

    def _drop(self, job: Job) -> None:
        if job.rid is None:  # not admitted yet (a follower): it never will be
            job.dropped = True
            self._give_back(job)
            return
        engine = self._engine(job.variant)
        if (id(job.variant.model), job.rid) in self._jobs:
            self._finish(id(job.variant.model), job, engine.cancel(job.rid))

    def _event(self, key: int, engine: Engine, event: Event) -> None:
        job = self._jobs.get((key, event.row))
        if job is None:
            return
        if event.prompt_logprobs is not None and job.sink is not None:
            job.sink.put(PromptScores(job.index, [TokenLogprob(*t) for t in event.prompt_logprobs]))
        if event.prefix is not None:
            self._prompt_state(job, event.prefix)
        if event.token is not None:
            self._token(job, event)
            done = (job.text is not None and job.text.stop is not None) or (
                job.json is not None and job.json.done
            )
            if event.result is None and done:
                self._finish(key, job, engine.stop(event.row))
                return
        if event.result is not None:
            self._finish(key, job, event.result)

    def _prompt_state(self, job: Job, prefix: Prefix) -> None:
        read = prefix.tokens - job.variant.start_tokens  # prompt ids the state has read
        if self.cache.capacity_bytes:
            self.cache.insert(job.ids[:read], prefix, job.variant.name)
        if read == len(job.ids):
            job.prompt_end = prefix
            self._release_followers(job)

    def _token(self, job: Job, event: Event) -> None:
        assert event.token is not None and job.text is not None
        if job.produced == 0 and job.sink is not None:
            self.metrics.first_token(time.perf_counter() - job.admitted_at)
        job.produced += 1
        self.metrics.generated(1)
        if event.logprob is not None:
            job.pending.append(TokenLogprob(event.token, event.logprob, event.top_logprobs or []))
        piece = self._visible(job, job.text.push(event.token))
        if piece and job.sink is not None:
            job.sink.put(Piece(job.index, piece, job.pending))
            job.pending = []

    def _visible(self, job: Job, piece: str) -> str:
        """A chat reply's leading spaces belong to the format (``Assistant: Hi``), not the reply."""
        if job.chat and job.leading:
            piece = piece.lstrip(" ")
        if piece:
            job.leading = False
        return piece

    def _finish(self, key: int, job: Job, result: RowResult) -> None:
        del self._jobs[key, result.row]
        if result.stop_reason == CANCELLED:
            self._give_back(job)
            return
        assert job.text is not None
        tail = self._visible(job, job.text.close())
        length = job.text.stop is None and result.stop_reason in (MAX_TOKENS, CONTEXT_FULL)
        if job.chat and result.state is not None and self.cache.capacity_bytes:
            self._keep_reply(job, result)
        self._give_back(job)  # before the client hears of it: /metrics agrees with what it saw
        if job.sink is not None:
            job.sink.put(
                Finished(job.index, "length" if length else "stop", tail, job.pending, len(result.token_ids))
            )

    def _keep_reply(self, job: Job, result: RowResult) -> None:
        """Cache the state after the reply as the next turn will send it back (``Assistant: <reply>``
        and the turn end). If the model's own ids differ from those (another tokenization, a reply
        cut short, a stop string), read those ids from the prompt's end state instead."""
        assert job.text is not None
        reply = reply_ids(self.registry.tokenizer, self.registry.template, job.text.text.lstrip(" "))
        if result.token_ids == reply:
            self.cache.insert(job.ids + reply, result.prefix(), job.variant.name)
        elif job.prompt_end is not None:  # an internal row (no sink): it reads the reply, for the cache
            internal = Job(-1, job.variant, job.ids + reply, Request(max_tokens=0), [])
            self._admit(internal, job.prompt_end, len(job.ids))

    def _fail(self, job: Job, error: ApiError) -> None:
        if job.released:  # it has ended already
            return
        job.dropped = True
        if job.sink is not None:
            job.sink.put(Failed(job.index, error))
        self._give_back(job)

    def _give_back(self, job: Job) -> None:
        if job.sink is not None and not job.released:
            job.released = True
            with self._lock:
                self._rows -= 1

    def _fail_engine(self, key: int, engine: Engine) -> None:
        error = ApiError(500, "the model failed on this batch; see the server's log", type="server_error")
        for (k, _), job in list(self._jobs.items()):
            if k == key:
                self._fail(job, error)
                for f in job.followers:
                    self._fail(f, error)
        self._jobs = {k: j for k, j in self._jobs.items() if k[0] != key}
        self.engines[key] = Engine(engine.model, prefill_chunk=self.prefill_chunk, max_batch=self.max_batch)

    def _cancel_everything(self) -> None:
        error = ApiError(503, "the server is shutting down", type="server_error")
        for (key, rid), job in list(self._jobs.items()):
            self.engines[key].cancel(rid)
            self._fail(job, error)
            for f in job.followers:
                self._fail(f, error)
        self._jobs.clear()
