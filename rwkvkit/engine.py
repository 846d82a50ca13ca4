"""The engine: token ids in, token ids out, many rows at once. Every generation path runs on it.

A row is one prompt being continued. Rows are added with :meth:`Engine.add` at any time, and each
:meth:`Engine.step`

1. prefills waiting prompts, first come first served, at most ``prefill_chunk`` prompt tokens per
   step in calls of at most that many tokens; a long prompt is read over several steps, so it never
   holds up the decoding rows for more than one chunk. Chunks start at multiples of
   ``prefill_chunk`` in each prompt, whatever else runs, so a row's numbers never depend on its
   neighbours;
2. samples one token for every decoding row from its own logits, with its own
   :class:`~rwkvkit.sampling.SamplingParams`, penalties and ``torch.Generator`` (and its
   :class:`TokenConstraint`, if any): a seeded row gives the same tokens alone or in any batch;
3. feeds those tokens to the model in one batched ``model.step`` call.

Rows end on a stop token, at ``max_tokens``, when a fixed-context model's window is full, or when
the caller stops or cancels them between steps (the text layer stops a row at a stop string, a
server cancels one whose client went away). Their states leave and join the decoding batch through
:class:`~rwkvkit.state.RecurrentState` ``select`` and ``cat``; the model never mutates a state, so
a :class:`Prefix` handed in or out is never changed by later steps.

No tokenizer here: text (incremental decoding, stop strings, chat templates) lives in
:mod:`rwkvkit.generate` and :mod:`rwkvkit.chat`, above this.

    engine = Engine(model)
    row = engine.add(Request(prompt=ids, params=SamplingParams(temperature=0), max_tokens=20))
    while engine.has_work:
        for event in engine.step():
            ...  # event.token (one new id), event.result (a RowResult once the row is over)
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from .cuda_graphs import graphable, graphed_step
from .errors import RwkvkitError
from .sampling import Penalties, SamplingParams, make_generator, next_token_rows
from .state import RecurrentState

DEFAULT_PREFILL_CHUNK = 256  # prompt tokens per model call: bounds prefill memory, keeps its speed

# Why a row ended (RowResult.stop_reason).
STOP_TOKEN = "stop_token"  # it sampled one of its stop token ids (not part of its output)
MAX_TOKENS = "max_tokens"  # it generated max_tokens tokens
CONTEXT_FULL = "context_full"  # a fixed-context model (config.n_ctx) has no room for another token
STOPPED = "stopped"  # the caller ended it with Engine.stop (e.g. at a stop string)
CANCELLED = "cancelled"  # the caller dropped it with Engine.cancel; no state is returned


@dataclasses.dataclass
class Prefix:
    """A processed prompt: the state after it and the logits of the token that comes next.

    ``state`` has batch size B and ``logits`` is (B, V) float32. Generating from a prefix never
    changes it, so one prefix serves any number of generations (a prefix cache hit).
    """

    state: RecurrentState
    logits: Tensor | None  # None: unknown (a bare state); the next prompt then must not be empty
    tokens: int  # how many tokens the state has consumed (for state files, statistics, windows)

    def clone(self) -> Prefix:
        return Prefix(self.state.clone(), None if self.logits is None else self.logits.clone(), self.tokens)


class TokenConstraint(Protocol):
    """Limits what one row may sample next (a server's JSON mode); the engine calls ``mask`` with
    the row's logits before each token and ``advance`` with the token sampled."""

    def mask(self, logits: Tensor) -> Tensor: ...  # (V,) -> (V,), tokens that may not come at -inf

    def advance(self, token: int) -> None: ...


@dataclasses.dataclass
class Request:
    """What one row asks for: what to read, how to sample, when to stop, what to give back."""

    prompt: Sequence[int] = ()  # token ids to prefill (after ``start``); may be empty with a start
    params: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    max_tokens: int = 256
    stop_token_ids: Collection[int] = ()  # sampling one of these ends the row; it is not output
    seed: int | None = None  # the row's own random stream (None: fresh entropy) ...
    generator: torch.Generator | None = None  # ... or this generator, on the model's device
    start: Prefix | None = None  # continue from this state and logits (batch 1)
    keep_state: bool = False  # the result carries the state after prompt + output, and next logits
    logprobs: int | None = None  # None: no logprobs; k >= 0: each token's and the k most likely
    keep_prompt_states: bool = False  # report a Prefix after every prefilled chunk (for a cache)
    constraint: TokenConstraint | None = None  # masks this row's logits before each token
    prompt_logprobs: int | None = None  # k >= 0: score each prompt token too (Event.prompt_logprobs)


@dataclasses.dataclass
class RowResult:
    """Everything about one finished row."""

    row: int
    token_ids: list[int]  # the generated ids; a stop token is not included
    prompt_tokens: int  # ids prefilled for this row (not counting its start)
    tokens: int  # the start's tokens + prompt_tokens + len(token_ids): what the state has read
    stop_reason: str  # STOP_TOKEN, MAX_TOKENS, CONTEXT_FULL, STOPPED or CANCELLED
    stop_token: int | None  # the stop token id that ended it
    prompt_seconds: float  # from its first prefill call to its last
    decode_seconds: float  # from then to the end
    state: RecurrentState | None = None  # (keep_state) after the prompt and every id in token_ids
    logits: Tensor | None = None  # (keep_state) (1, V) next-token logits with that state

    def prefix(self) -> Prefix:
        """The kept state, to continue from (needs keep_state)."""
        if self.state is None:
            raise RwkvkitError("this row did not keep its state; pass keep_state=True")
        return Prefix(self.state, self.logits, self.tokens)


@dataclasses.dataclass
class Event:
    """Something that happened to one row during a step."""

    row: int
    token: int | None = None  # a new generated id (None: no new id in this event)
    logprob: float | None = None  # (logprobs) log-probability of ``token`` under the model's logits
    top_logprobs: list[tuple[int, float]] | None = None  # (logprobs=k) the k most likely ids, best first
    prefix: Prefix | None = None  # (keep_prompt_states) the state after a prefilled chunk of the prompt
    # (prompt_logprobs=k) for each prompt token of a prefilled chunk: (id, log P under the logits
    # before it, its k most likely); log P is None for the first token of a fresh state (no logits)
    prompt_logprobs: list[tuple[int, float | None, list[tuple[int, float]]]] | None = None
    result: RowResult | None = None  # the row is over; ``token``, if any, was its last


# --------------------------------------------------------------------------------------------
# Calling the model. The engine is the one place that calls a model to generate.


def _forward_last(
    model: nn.Module, ids: Tensor, state: RecurrentState | None
) -> tuple[Tensor, RecurrentState]:
    """ids (B, T) -> (logits (B, V) float32 after the last id, state): prefill needs no others."""
    logits, state = model(ids, state, last_only=True)
    return logits[:, -1].float(), state


def _model_limits(model: nn.Module) -> tuple[int | None, int | None]:
    """(vocabulary size, fixed context length or None for a recurrent model)."""
    config = getattr(model, "config", None)
    return getattr(config, "vocab_size", None), getattr(config, "n_ctx", None)


def _check_prompt(model: nn.Module, ids: Sequence[int] | Tensor, before: int) -> None:
    """Refuse ids outside the vocabulary, and prompts past a fixed-context model's window."""
    vocab, context = _model_limits(model)
    n = len(ids) if not isinstance(ids, Tensor) else ids.shape[-1]
    if n and vocab is not None:
        t = torch.as_tensor(ids)
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= vocab:
            raise RwkvkitError(
                f"token id {lo if lo < 0 else hi} is outside this model's vocabulary (0..{vocab - 1}); "
                "encode the prompt with the model's tokenizer"
            )
    if context is not None and before + n > context:
        raise RwkvkitError(
            f"{before} + {n} prompt tokens exceed this model's context of {context} tokens; shorten the prompt"
        )


@torch.no_grad()
def prefill(
    model: nn.Module,
    tokens: Sequence[int] | Tensor,
    start: Prefix | RecurrentState | None = None,
    *,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
) -> Prefix:
    """Read tokens (B, T) or a list of ids (B = 1), T >= 1, from ``start`` (None: a fresh state).

    Runs ``prefill_chunk`` tokens per model call; the state carries from chunk to chunk, which the
    model guarantees gives the same numbers as one call over everything.
    """
    device = next(model.parameters()).device
    ids = torch.as_tensor(tokens, dtype=torch.long, device=device)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise RwkvkitError(f"prefill needs at least one token, got shape {tuple(ids.shape)}")
    if prefill_chunk < 1:
        raise RwkvkitError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
    if isinstance(start, RecurrentState):
        start = Prefix(start, None, 0)
    before = 0 if start is None else start.tokens
    _check_prompt(model, ids, before)
    state = None if start is None else start.state
    logits = None
    for s in range(0, ids.shape[1], prefill_chunk):
        logits, state = _forward_last(model, ids[:, s : s + prefill_chunk], state)
    assert logits is not None  # a stateless fixed-window model may return no state
    return Prefix(state, logits, before + ids.shape[1])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Rows and the decoding batch


@dataclasses.dataclass(eq=False)  # rows compare by identity
class _Row:
    rid: int
    request: Request
    prompt: list[int]
    stop_ids: frozenset[int]
    generator: torch.Generator
    penalties: Penalties | None  # one row's occurrence counts, when its params use penalties
    budget: int  # tokens it may still generate: max_tokens, and a fixed-context model's room
    tokens: int  # tokens its state has read
    state: RecurrentState | None  # while prefilling (None: fresh); the batch holds it afterwards
    logits: Tensor | None  # (1, V) after the last prefilled token
    done: int = 0  # prompt tokens prefilled so far
    token_ids: list[int] = dataclasses.field(default_factory=list)
    t_start: float | None = None  # first prefill call
    t_ready: float | None = None  # prompt read, decoding begins


@dataclasses.dataclass(eq=False)
class _Batch:
    """Rows decoded together: one state with a batch row each, and their next-token logits."""

    rows: list[_Row]
    state: RecurrentState
    logits: Tensor  # (b, V) float32


def _signature(state: RecurrentState) -> tuple:
    """What must match for two states to share a batch: every shape but the batch, and dtypes.
    RWKV states always match; a GPT cache matches only at equal lengths."""
    return tuple((n, t.shape[:1] + t.shape[2:], t.dtype) for n, t in state.tensors().items())


# --------------------------------------------------------------------------------------------
# The engine


class Engine:
    """Continuous batching over one model; see the module docstring.

    ``max_batch`` (None: no limit) bounds the rows decoding at once; further rows wait, unprefilled,
    until one ends. ``cuda_graphs`` replays the decode step from CUDA graphs
    (:class:`~rwkvkit.cuda_graphs.GraphedStep`); None: on a GPU, for the models it fits. The engine
    is not thread-safe: drive it from one thread (a server's loop).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        max_batch: int | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        if prefill_chunk < 1:
            raise RwkvkitError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        if max_batch is not None and max_batch < 1:
            raise RwkvkitError(f"max_batch must be >= 1 (or None for no limit), got {max_batch}")
        self.model, self.prefill_chunk, self.max_batch = model, prefill_chunk, max_batch
        self.device = next(model.parameters()).device
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda" and graphable(model)
        self._step = graphed_step(model) if cuda_graphs else model.step  # the batched decode call
        self.vocab_size, self.context_len = _model_limits(model)
        self._rows: dict[int, _Row] = {}  # every live row
        self._waiting: deque[_Row] = deque()  # not yet fully prefilled, first come first served
        self._batches: list[_Batch] = []
        self._next_rid = 0

    # -- what is going on -----------------------------------------------------------------------

    @property
    def has_work(self) -> bool:
        return bool(self._rows)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_decoding(self) -> int:
        return sum(1 for b in self._batches for r in b.rows if r.rid in self._rows)

    # -- rows in and out ------------------------------------------------------------------------

    def add(self, request: Request) -> int:
        """Queue a row; its id comes back. It is prefilled and decoded by the coming steps."""
        prompt = [int(t) for t in request.prompt]
        start = request.start
        if request.max_tokens < 0:
            raise RwkvkitError(f"max_tokens must be >= 0, got {request.max_tokens}")
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(request, name)
            if k is not None and not 0 <= k <= (self.vocab_size or 2**31):
                raise RwkvkitError(f"{name} must be >= 0 and at most the vocabulary size, got {k}")
        if start is not None and start.state.batch_size != 1:
            raise RwkvkitError(f"a start state must have batch size 1, got {start.state.batch_size}")
        if not prompt and (start is None or start.logits is None):
            raise RwkvkitError(
                "empty prompt: give at least one token of text, or a Prefix (rwkvkit.engine.prefill or "
                "a state file with logits) to continue from"
            )
        before = 0 if start is None else start.tokens
        _check_prompt(self.model, prompt, before)
        budget = request.max_tokens
        if self.context_len is not None:
            budget = min(budget, self.context_len - before - len(prompt))
        params = request.params
        if params.uses_penalties and not self.vocab_size:
            raise RwkvkitError("penalties need the model's vocabulary size (model.config.vocab_size)")
        row = _Row(
            rid=self._next_rid,
            request=request,
            prompt=prompt,
            stop_ids=frozenset(int(t) for t in request.stop_token_ids),
            generator=request.generator
            if request.generator is not None
            else make_generator(request.seed, self.device),
            penalties=Penalties(1, self.vocab_size, params, self.device) if params.uses_penalties else None,
            budget=budget,
            tokens=before,
            state=None if start is None else start.state,
            logits=None if start is None or start.logits is None else start.logits.reshape(1, -1).float(),
        )
        self._next_rid += 1
        self._rows[row.rid] = row
        self._waiting.append(row)
        return row.rid

    def stop(self, row: int) -> RowResult:
        """End a row now, after the tokens it has produced (all of them already read by its state,
        which the result carries if it asked for keep_state)."""
        return self._remove(row, STOPPED)

    def cancel(self, row: int) -> RowResult:
        """Drop a row now (its client went away): its batch row is freed at the next step."""
        return self._remove(row, CANCELLED)

    def _remove(self, rid: int, reason: str) -> RowResult:
        row = self._rows.get(rid)
        if row is None:
            raise RwkvkitError(f"no row {rid} in this engine (it ended, or was never added)")
        state = logits = None
        if row in self._waiting:
            self._waiting.remove(row)
        elif reason == STOPPED and row.request.keep_state:
            batch = next(b for b in self._batches if row in b.rows)
            pos = batch.rows.index(row)
            state, logits = batch.state.select([pos]), batch.logits[pos : pos + 1]
        return self._finish(row, reason, None, state, logits)  # the batch drops the row at the next step

    def _finish(
        self,
        row: _Row,
        reason: str,
        stop_token: int | None,
        state: RecurrentState | None,
        logits: Tensor | None,
    ) -> RowResult:
        del self._rows[row.rid]
        now = time.perf_counter()
        ready = row.t_ready if row.t_ready is not None else now
        keep = row.request.keep_state and reason != CANCELLED
        return RowResult(
            row=row.rid,
            token_ids=row.token_ids,
            prompt_tokens=row.done,
            tokens=row.tokens + len(row.token_ids),
            stop_reason=reason,
            stop_token=stop_token,
            prompt_seconds=ready - row.t_start if row.t_start is not None else 0.0,
            decode_seconds=now - ready,
            state=state if keep else None,
            logits=logits if keep else None,
        )

    # -- the step -------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> list[Event]:
        """Prefill up to one chunk of waiting prompts, then decode one token for every decoding row."""
        events: list[Event] = []
        self._drop_ended_rows()
        self._prefill(events)
        for batch in list(self._batches):
            self._decode(batch, events)
        return events

    def run(self) -> Iterator[Event]:
        """Step until every row has ended, yielding the events."""
        while self.has_work:
            yield from self.step()

    def _drop_ended_rows(self) -> None:
        """Rows stopped or cancelled between steps leave their batch here, in one select per batch."""
        for batch in list(self._batches):
            keep = [pos for pos, r in enumerate(batch.rows) if r.rid in self._rows]
            if not keep:
                self._batches.remove(batch)
            elif len(keep) < len(batch.rows):
                idx = torch.tensor(keep, device=batch.logits.device)
                batch.rows = [batch.rows[pos] for pos in keep]
                batch.state, batch.logits = batch.state.select(idx), batch.logits[idx]

    def _prefill(self, events: list[Event]) -> None:
        room = self.prefill_chunk  # prompt tokens this step may still read
        while self._waiting:
            if self.max_batch is not None and self.num_decoding >= self.max_batch:
                return
            row = self._waiting[0]
            n = min(self.prefill_chunk, len(row.prompt) - row.done)
            if n > room:  # the next chunk waits for the next step (chunks stay where they would alone)
                return
            if n:
                if row.t_start is None:
                    row.t_start = time.perf_counter()
                ids = torch.tensor(
                    [row.prompt[row.done : row.done + n]], dtype=torch.long, device=self.device
                )
                if row.request.prompt_logprobs is None:
                    row.logits, row.state = _forward_last(self.model, ids, row.state)
                else:
                    events.append(Event(row.rid, prompt_logprobs=self._score_prompt(row, ids)))
                row.done += n
                row.tokens += n
                room -= n
                if row.request.keep_prompt_states:
                    events.append(Event(row.rid, prefix=Prefix(row.state, row.logits, row.tokens)))
            if row.done == len(row.prompt):
                self._waiting.popleft()
                self._start_decoding(row, events)

    def _score_prompt(
        self, row: _Row, ids: Tensor
    ) -> list[tuple[int, float | None, list[tuple[int, float]]]]:
        """Prefill ``ids`` (1, n) with every position's logits, and score each id under the logits
        before it (the row's last logits for the first one, if it has them)."""
        logits, row.state = self.model(ids, row.state)
        logits = logits[0].float()  # (n, V)
        before = logits[:-1] if row.logits is None else torch.cat([row.logits, logits[:-1]])
        unscored = ids.shape[1] - before.shape[0]  # 1 from a fresh state, else 0
        row.logits = logits[-1:]
        logp = torch.log_softmax(before, dim=-1)
        toks = ids[0].tolist()
        chosen = logp.gather(-1, ids[0, unscored:, None])[:, 0].tolist()
        k = row.request.prompt_logprobs or 0
        top_p, top_i = torch.topk(logp, k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
        out: list[tuple[int, float | None, list[tuple[int, float]]]] = (
            [(toks[0], None, [])] if unscored else []
        )
        for j, lp in enumerate(chosen):
            out.append((toks[unscored + j], lp, list(zip(top_i[j].tolist(), top_p[j].tolist(), strict=True))))
        return out

    def _start_decoding(self, row: _Row, events: list[Event]) -> None:
        row.t_ready = time.perf_counter()
        assert row.state is not None and row.logits is not None
        if row.budget <= 0:  # max_tokens=0, or the prompt filled a fixed context
            reason = MAX_TOKENS if row.request.max_tokens == 0 else CONTEXT_FULL
            events.append(Event(row.rid, result=self._finish(row, reason, None, row.state, row.logits)))
            return
        state, logits = row.state, row.logits
        row.state = row.logits = None
        key = _signature(state)
        for batch in self._batches:
            if _signature(batch.state) == key:
                batch.rows.append(row)
                batch.state = type(state).cat([batch.state, state])
                batch.logits = torch.cat([batch.logits, logits])
                return
        self._batches.append(_Batch([row], state, logits))

    def _decode(self, batch: _Batch, events: list[Event]) -> None:
        """Sample one token per row; feed the rows that go on (and those that end but keep their
        state) in one model call; rows that end leave the batch."""
        rows = batch.rows
        logits = batch.logits
        constrained = [pos for pos, r in enumerate(rows) if r.request.constraint is not None]
        if constrained:  # logprobs stay those of the model's own logits
            logits = logits.clone()
            for pos in constrained:
                logits[pos] = rows[pos].request.constraint.mask(logits[pos])  # type: ignore[union-attr]
        tokens = next_token_rows(
            logits,
            [r.request.params for r in rows],
            [r.penalties for r in rows],
            [r.generator for r in rows],
        )
        logprobs = self._logprobs(batch, tokens)
        ending: dict[int, tuple[str, int | None]] = {}  # batch position -> (reason, stop token)
        fed: list[int] = []  # batch positions whose token the model reads
        toks = tokens.tolist()
        for pos, (row, tok) in enumerate(zip(rows, toks, strict=True)):
            if tok in row.stop_ids:
                ending[pos] = (STOP_TOKEN, tok)
                continue
            row.token_ids.append(tok)
            if row.request.constraint is not None:
                row.request.constraint.advance(tok)
            if row.penalties is not None:
                row.penalties.update(tokens[pos : pos + 1])
            row.budget -= 1
            if row.budget == 0:
                full = len(row.token_ids) < row.request.max_tokens
                ending[pos] = (CONTEXT_FULL if full else MAX_TOKENS, None)
                if not row.request.keep_state:
                    continue
            fed.append(pos)
        new_logits = new_state = None
        if fed:
            if len(fed) == len(rows):
                state, ids = batch.state, tokens
            else:
                idx = torch.tensor(fed, device=tokens.device)
                state, ids = batch.state.select(idx), tokens[idx]
            new_logits, new_state = self._step(ids, state)
        at = {pos: j for j, pos in enumerate(fed)}  # batch position -> row of the new state
        for pos, row in enumerate(rows):
            lp = logprobs.get(pos, (None, None))
            if pos not in ending:
                events.append(Event(row.rid, toks[pos], *lp))
                continue
            reason, stop_token = ending[pos]
            state = logits = None
            if row.request.keep_state:
                if pos in at:  # its last token was read
                    assert new_state is not None and new_logits is not None
                    state, logits = new_state.select([at[pos]]), new_logits[at[pos] : at[pos] + 1]
                else:  # a stop token is not read: the state stays before it
                    state, logits = batch.state.select([pos]), batch.logits[pos : pos + 1]
            result = self._finish(row, reason, stop_token, state, logits)
            token = None if reason == STOP_TOKEN else toks[pos]
            events.append(Event(row.rid, token, *(lp if token is not None else (None, None)), result=result))
        going_on = [j for j, pos in enumerate(fed) if pos not in ending]
        if not going_on:
            self._batches.remove(batch)
            return
        assert new_state is not None and new_logits is not None
        batch.rows = [rows[fed[j]] for j in going_on]
        if len(going_on) == len(fed):
            batch.state, batch.logits = new_state, new_logits
        else:
            idx = torch.tensor(going_on, device=new_logits.device)
            batch.state, batch.logits = new_state.select(idx), new_logits[idx]

    def _logprobs(self, batch: _Batch, tokens: Tensor) -> dict[int, tuple[float, list[tuple[int, float]]]]:
        """Batch position -> (log P(token), top-k (id, log P)) under the model's own logits (before
        sampling settings), for the rows that asked."""
        want = [pos for pos, r in enumerate(batch.rows) if r.request.logprobs is not None]
        if not want:
            return {}
        idx = torch.tensor(want, device=tokens.device)
        logp = torch.log_softmax(batch.logits[idx], dim=-1)  # (n, V)
        chosen = logp.gather(-1, tokens[idx][:, None])[:, 0].tolist()
        k = max(batch.rows[pos].request.logprobs or 0 for pos in want)
        top_p, top_i = torch.topk(logp, k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
        out = {}
        for j, pos in enumerate(want):
            kj = batch.rows[pos].request.logprobs or 0
            top = list(zip(top_i[j, :kj].tolist(), top_p[j, :kj].tolist(), strict=True))
            out[pos] = (chosen[j], top)
        return out
