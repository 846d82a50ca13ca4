"""Generation: prefill the prompt in chunks, then decode one token at a time, streaming text.

Small named steps, each usable on its own:

- :func:`prefill`: token ids -> the logits after the last one and the state; the prompt goes
  through the model's parallel mode in chunks of ``chunk_len`` tokens, so memory stays bounded
  for any prompt length (a 100k-token prompt holds one chunk's activations at a time);
- :func:`decode_one_token`: one token per row -> next logits and state (the recurrent mode);
- :class:`Prefix`: a prompt's state and next-token logits, computed once and reused by any
  number of generations (the model never mutates a state, so reuse needs no copy);
- :func:`generate`: the streaming API, ``for piece in rwkvkit.generate(model, tok, prompt): ...``,
  with ``.result`` (a :class:`GenerationResult`) once the iteration is over;
- :func:`generate_text` (one prompt, no streaming) and :func:`generate_batch` (several prompts
  decoded together, one state row each) return results directly.

Text is streamed through an incremental decoder, so a piece never ends inside a multi-byte
character, and held back while it could be the start of a stop string, so a stop string is never
emitted, even when the tokens split it.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import RwkvkitError
from .sampling import Penalties, SamplingParams, make_generator, next_token
from .state import RecurrentState

DEFAULT_CHUNK_LEN = 256  # prompt tokens per forward call in prefill: bounds memory, keeps speed
SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


# --------------------------------------------------------------------------------------------
# Steps on token ids


@dataclasses.dataclass
class Prefix:
    """A processed prompt: the state after it and the logits of the token that comes next.

    ``state`` has batch size B and ``logits`` is (B, V) float32. Generating from a prefix never
    changes it, so one prefix serves any number of generations.
    """

    state: RecurrentState
    logits: Tensor | None  # None: unknown (a bare state); the next prompt then must not be empty
    tokens: int  # how many tokens the state has consumed (for state files and statistics)

    def clone(self) -> Prefix:
        return Prefix(self.state.clone(), None if self.logits is None else self.logits.clone(), self.tokens)


def _accepts_last_only(model: nn.Module) -> bool:
    try:
        return "last_only" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def prefill(
    model: nn.Module,
    tokens: Sequence[int] | Tensor,
    state: RecurrentState | None = None,
    chunk_len: int = DEFAULT_CHUNK_LEN,
) -> tuple[Tensor, RecurrentState]:
    """tokens (B, T) or a list of ids (B = 1), T >= 1 -> (logits (B, V) after the last token, state).

    Runs ``chunk_len`` tokens per forward call; the state carries from chunk to chunk, which the
    model guarantees gives the same numbers as one call over everything.
    """
    device = next(model.parameters()).device
    ids = torch.as_tensor(tokens, dtype=torch.long, device=device)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise RwkvkitError(f"prefill needs at least one token, got shape {tuple(ids.shape)}")
    if chunk_len < 1:
        raise RwkvkitError(f"prefill chunk_len must be >= 1, got {chunk_len}")
    kwargs = {"last_only": True} if _accepts_last_only(model) else {}
    logits = None
    for start in range(0, ids.shape[1], chunk_len):
        logits, state = model(ids[:, start : start + chunk_len], state, **kwargs)
    assert logits is not None and state is not None
    return logits[:, -1].float(), state


@torch.no_grad()
def decode_one_token(
    model: nn.Module, tokens: Tensor, state: RecurrentState
) -> tuple[Tensor, RecurrentState]:
    """tokens (B,) -> (logits (B, V) for the next token, new state)."""
    logits, state = model(tokens[:, None], state)
    return logits[:, -1].float(), state


# --------------------------------------------------------------------------------------------
# Text: incremental decoding and stop strings


def _incremental_decoder(tokenizer: Any) -> Any:
    from .tokenizer import IncrementalDecoder

    return IncrementalDecoder(tokenizer)


class _StopFilter:
    """Holds back text that may be the start of a stop string; finds stop strings across pieces."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, str | None]:
        """Add decoded text; return (text safe to emit, the stop string found or None)."""
        self.pending += text
        hit, at = None, len(self.pending) + 1
        for s in self.stops:
            i = self.pending.find(s)
            if i != -1 and i < at:
                hit, at = s, i
        if hit is not None:
            out, self.pending = self.pending[:at], ""
            return out, hit
        hold = 0  # the longest end of pending that begins some stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, None

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


# --------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class GenerationResult:
    """Everything about one finished generation."""

    text: str  # the continuation, without the stop string
    token_ids: list[int]  # the generated ids; a stop token id is not included
    prompt_tokens: int  # tokens prefilled for this generation (0 when it started from a Prefix alone)
    stop_reason: str  # "stop_string", "stop_token" or "max_tokens"
    stop: str | int | None  # the stop string or stop token id that ended it
    prompt_seconds: float
    decode_seconds: float
    state: RecurrentState | None = None  # (keep_state=True) after the prompt and every token in token_ids
    logits: Tensor | None = None  # (keep_state=True) (1, V) next-token logits with that state

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else float("nan")

    @property
    def generated_tokens_per_s(self) -> float:
        return len(self.token_ids) / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    def prefix(self, tokens_before: int = 0) -> Prefix:
        """The kept state as a :class:`Prefix`, to continue the text (needs keep_state=True)."""
        if self.state is None or self.logits is None:
            raise RwkvkitError("this generation did not keep its state; pass keep_state=True")
        return Prefix(self.state, self.logits, tokens_before + self.prompt_tokens + len(self.token_ids))

    def stats(self) -> str:
        prompt = (
            f"prompt: {self.prompt_tokens} tokens in {self.prompt_seconds:.3f} s ({self.prompt_tokens_per_s:.1f} tok/s)"
            if self.prompt_tokens
            else "prompt: 0 tokens (continued from a state)"
        )
        return (
            f"{prompt}; generated: {len(self.token_ids)} tokens in "
            f"{self.decode_seconds:.3f} s ({self.generated_tokens_per_s:.1f} tok/s); stop: {self.stop_reason}"
        )


# --------------------------------------------------------------------------------------------
# The engine: B rows decoded together, each with its own text, stops and random stream


@dataclasses.dataclass
class _Row:
    decoder: Any
    stop_filter: _StopFilter
    pieces: list[str] = dataclasses.field(default_factory=list)
    token_ids: list[int] = dataclasses.field(default_factory=list)
    result: GenerationResult | None = None


def _split_sampling(kwargs: dict[str, Any]) -> SamplingParams:
    unknown = set(kwargs) - SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"unknown generation arguments: {sorted(unknown)}")
    return SamplingParams(**kwargs)


def _encode(tokenizer: Any, prompt: str | Sequence[int]) -> list[int]:
    return tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]


def _start(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    state: Prefix | RecurrentState | None,
    chunk_len: int,
) -> tuple[Tensor, RecurrentState, list[int], float]:
    """Prefill every prompt on its own row (ragged lengths need no padding): (logits, state, lengths, s)."""
    t0 = time.perf_counter()
    if isinstance(state, RecurrentState):
        state = Prefix(state, None, 0)
    if state is not None and state.state.batch_size != 1:
        raise RwkvkitError(
            f"a prompt state for generation must have batch size 1, got {state.state.batch_size}"
        )
    logits, states, lengths = [], [], []
    for prompt in prompts:
        ids = _encode(tokenizer, prompt)
        lengths.append(len(ids))
        if ids:
            row_logits, row_state = prefill(model, ids, None if state is None else state.state, chunk_len)
        elif state is not None and state.logits is not None:
            row_logits, row_state = state.logits, state.state
        else:
            raise RwkvkitError(
                "empty prompt: give at least one token of text, or a Prefix (rwkvkit.generate.prefill or "
                "a state file with logits) to continue from"
            )
        logits.append(row_logits.reshape(1, -1))
        states.append(row_state)
    state_cls = type(states[0])
    return torch.cat(logits), state_cls.cat(states), lengths, time.perf_counter() - t0


class _Engine:
    """Decodes B rows together. ``events()`` yields (row, text piece); ``rows[r].result`` at the end."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams,
        *,
        max_tokens: int,
        stop: str | Sequence[str],
        stop_token_ids: Sequence[int] | None,
        seed: int | None,
        generator: torch.Generator | None,
        state: Prefix | RecurrentState | None,
        keep_state: bool,
        chunk_len: int,
    ) -> None:
        if max_tokens < 0:
            raise RwkvkitError(f"max_tokens must be >= 0, got {max_tokens}")
        if not prompts:
            raise RwkvkitError("no prompts to generate from")
        if stop_token_ids is None:
            eos = getattr(tokenizer, "eos_id", None)
            stop_token_ids = [] if eos is None else [eos]
        self.model, self.tokenizer, self.prompts, self.params = model, tokenizer, prompts, params
        self.max_tokens, self.seed, self.generator = max_tokens, seed, generator
        self.stop = [stop] if isinstance(stop, str) else list(stop)
        self.stop_ids = {int(t) for t in stop_token_ids}
        self.state, self.keep_state, self.chunk_len = state, keep_state, chunk_len
        self.rows: list[_Row] = []

    def events(self) -> Iterator[tuple[int, str]]:
        params, max_tokens, keep_state = self.params, self.max_tokens, self.keep_state
        logits, cur_state, lengths, prompt_s = _start(
            self.model, self.tokenizer, self.prompts, self.state, self.chunk_len
        )
        B, V = logits.shape
        device = logits.device
        gens_all: torch.Generator | list[torch.Generator]
        if self.generator is not None:
            gens_all = self.generator
        elif B == 1:
            gens_all = make_generator(self.seed, device)
        else:  # row i draws from seed + i: a row's text does not depend on the rest of the batch
            gens_all = [
                make_generator(None if self.seed is None else self.seed + i, device) for i in range(B)
            ]
        penalties = Penalties(B, V, params, device) if params.uses_penalties else None
        rows = self.rows = [
            _Row(_incremental_decoder(self.tokenizer), _StopFilter(self.stop)) for _ in range(B)
        ]
        active = list(range(B))  # batch position -> row index
        t0 = time.perf_counter()

        def finish(
            r: int, reason: str, which: str | int | None, st: RecurrentState | None, lg: Tensor | None
        ) -> None:
            rows[r].result = GenerationResult(
                text="".join(rows[r].pieces),
                token_ids=rows[r].token_ids,
                prompt_tokens=lengths[r],
                stop_reason=reason,
                stop=which,
                prompt_seconds=prompt_s,
                decode_seconds=time.perf_counter() - t0,
                state=st,
                logits=lg,
            )

        if max_tokens == 0:
            for r in range(B):
                finish(r, "max_tokens", None, cur_state.select([r]), logits[r : r + 1])
            return

        while active:
            gens = gens_all if isinstance(gens_all, torch.Generator) else [gens_all[r] for r in active]
            with torch.no_grad():
                tokens = next_token(logits, params, penalties, gens)  # (b,)
            if penalties is not None:
                penalties.update(tokens)
            ending: dict[int, tuple[str, str | int | None]] = {}  # batch position -> why it stops
            for pos, (r, tok) in enumerate(zip(active, tokens.tolist(), strict=True)):
                text = self._advance(rows[r], tok, pos, ending)
                if text:
                    rows[r].pieces.append(text)
                    yield r, text
            fed = len(ending) < len(active) or keep_state
            if fed:
                new_logits, new_state = decode_one_token(self.model, tokens, cur_state)
            for pos, (reason, which) in ending.items():
                r = active[pos]
                if not keep_state:
                    finish(r, reason, which, None, None)
                elif reason == "stop_token":  # the end-of-text token is not fed: the state stays before it
                    finish(r, reason, which, cur_state.select([pos]), logits[pos : pos + 1])
                else:
                    finish(r, reason, which, new_state.select([pos]), new_logits[pos : pos + 1])
            if not fed:
                return
            if ending:
                keep = [pos for pos in range(len(active)) if pos not in ending]
                if not keep:
                    return
                idx = torch.tensor(keep, device=device)
                new_state, new_logits = new_state.select(idx), new_logits[idx]
                if penalties is not None:
                    penalties.select(idx)
                active = [active[pos] for pos in keep]
            logits, cur_state = new_logits, new_state

    def _advance(self, row: _Row, tok: int, pos: int, ending: dict[int, tuple[str, str | int | None]]) -> str:
        """Take one sampled token into a row; return the text it releases, note in ``ending`` if it ends."""
        if tok in self.stop_ids:
            ending[pos] = ("stop_token", tok)
            text, hit = row.stop_filter.push(row.decoder.flush())
            return text if hit is not None else text + row.stop_filter.flush()
        row.token_ids.append(tok)
        text, hit = row.stop_filter.push(row.decoder.push([tok]))
        if hit is not None:
            ending[pos] = ("stop_string", hit)
        elif len(row.token_ids) >= self.max_tokens:
            ending[pos] = ("max_tokens", None)
            tail, hit = row.stop_filter.push(row.decoder.flush())
            text += tail if hit is not None else tail + row.stop_filter.flush()
            if hit is not None:
                ending[pos] = ("stop_string", hit)
        return text


class Generation:
    """A streaming generation: iterate for text pieces; ``.result`` once the iteration is done.

    >>> gen = rwkvkit.generate(model, tokenizer, "The Eiffel tower is in", max_tokens=20)
    >>> for piece in gen:
    ...     print(piece, end="", flush=True)
    >>> gen.result.stop_reason, gen.result.generated_tokens_per_s

    ``finish()`` runs it to the end (or returns the result at once if it is already over).
    Nothing is computed until the first piece is asked for.
    """

    def __init__(self, engine: _Engine) -> None:
        self._engine = engine
        self._events = engine.events()
        self.result: GenerationResult | None = None

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> str:
        try:
            return next(self._events)[1]
        except StopIteration:
            self.result = self._engine.rows[0].result
            raise

    def finish(self) -> GenerationResult:
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def close(self) -> None:
        """Stop early (e.g. the reader went away); ``.result`` stays None."""
        self._events.close()  # type: ignore[attr-defined]


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[int],
    *,
    max_tokens: int = 256,
    stop: str | Sequence[str] = (),
    stop_token_ids: Sequence[int] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    state: Prefix | RecurrentState | None = None,
    keep_state: bool = False,
    chunk_len: int = DEFAULT_CHUNK_LEN,
    **sampling: Any,
) -> Generation:
    """Stream the continuation of ``prompt`` as text pieces; the :class:`GenerationResult` is
    ``.result`` of the returned :class:`Generation` once it is exhausted (or ``.finish()``).

    - ``prompt``: text, or token ids; with ``state`` it continues from that state (it may then
      be empty if ``state`` is a :class:`Prefix`, which carries the next-token logits);
    - ``**sampling``: the fields of :class:`~rwkvkit.sampling.SamplingParams` (temperature, top_p,
      top_k, min_p, presence_penalty, frequency_penalty, penalty_decay, logit_bias, banned_tokens);
    - ``stop``: strings that end the generation, never emitted; ``stop_token_ids``: ids that end
      it (default: the tokenizer's end-of-text id, if it has one); ``max_tokens``: at most this many;
    - ``seed`` or ``generator``: the random stream (same seed, same inputs: same text);
    - ``keep_state``: put the state after the prompt and every generated token in the result, to
      continue from (costs one extra model step at the end).
    """
    params = _split_sampling(sampling)
    engine = _Engine(
        model,
        tokenizer,
        [prompt],
        params,
        max_tokens=max_tokens,
        stop=stop,
        stop_token_ids=stop_token_ids,
        seed=seed,
        generator=generator,
        state=state,
        keep_state=keep_state,
        chunk_len=chunk_len,
    )
    return Generation(engine)


def generate_text(
    model: nn.Module, tokenizer: Any, prompt: str | Sequence[int], **kwargs: Any
) -> GenerationResult:
    """:func:`generate` without streaming: the finished :class:`GenerationResult`."""
    return generate(model, tokenizer, prompt, **kwargs).finish()


def generate_batch(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    *,
    max_tokens: int = 256,
    stop: str | Sequence[str] = (),
    stop_token_ids: Sequence[int] | None = None,
    seed: int | None = None,
    state: Prefix | RecurrentState | None = None,
    keep_state: bool = False,
    chunk_len: int = DEFAULT_CHUNK_LEN,
    **sampling: Any,
) -> list[GenerationResult]:
    """Generate from several prompts at once, one state row each; results in prompt order.

    Prompts of different lengths are prefilled separately (no padding, so no pad token can leak
    into a state) and then decoded together; rows that stop leave the batch. Row i samples from
    ``seed + i``, so it gives the same text as ``generate(..., seed=seed + i)`` alone (up to
    float rounding differences between batch sizes, which can only matter on near-ties). With
    ``state`` (batch 1) every prompt continues from it: ``prompts=[""] * n`` draws n samples
    from one :class:`Prefix`.
    """
    params = _split_sampling(sampling)
    engine = _Engine(
        model,
        tokenizer,
        list(prompts),
        params,
        max_tokens=max_tokens,
        stop=stop,
        stop_token_ids=stop_token_ids,
        seed=seed,
        generator=None,
        state=state,
        keep_state=keep_state,
        chunk_len=chunk_len,
    )
    for _ in engine.events():
        pass
    return [row.result for row in engine.rows]  # type: ignore[misc]


def prefill_text(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[int],
    state: Prefix | RecurrentState | None = None,
    chunk_len: int = DEFAULT_CHUNK_LEN,
) -> Prefix:
    """Process a prompt once, to reuse it: ``generate(model, tok, "", state=prefix)`` many times."""
    ids = _encode(tokenizer, prompt)
    before = state.tokens if isinstance(state, Prefix) else 0
    start = state.state if isinstance(state, Prefix) else state
    if not ids:
        if isinstance(state, Prefix):
            return state
        raise RwkvkitError("prefill_text: the prompt is empty")
    logits, new_state = prefill(model, ids, start, chunk_len)
    return Prefix(new_state, logits, before + len(ids))
