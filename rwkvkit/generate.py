"""Text generation: a thin layer over the id-only :mod:`rwkvkit.engine`.

- :func:`generate`: the streaming API, ``for piece in rwkvkit.generate(model, tok, prompt): ...``,
  with ``.result`` (a :class:`GenerationResult`) once the iteration is over;
- :func:`generate_text` (one prompt, no streaming) and :func:`generate_batch` (several prompts
  decoded together, one state row each) return results directly;
- :func:`prefill_text`: a prompt read once into a :class:`Prefix` (its state and next-token
  logits), reused by any number of generations;
- :class:`TextStream`: one row's text as its ids arrive, what every text path (and a server)
  streams through.

Text is streamed through an incremental decoder, so a piece never ends inside a multi-byte
character, and held back while it could be the start of a stop string, so a stop string is never
emitted, even when the tokens split it. The engine does the rest: chunked prefill (``prefill_chunk``
prompt tokens per model call, so memory stays bounded for any prompt length), batched decoding,
per-row sampling and stop tokens.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .engine import DEFAULT_PREFILL_CHUNK, Engine, Prefix, Request, RowResult, prefill
from .errors import InputError, RwkvkitError
from .fileio import check_utf8
from .sampling import SamplingParams, make_generator
from .state import RecurrentState
from .tokenizer import IncrementalDecoder, check_vocab_fits

SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


# --------------------------------------------------------------------------------------------
# Text: incremental decoding and stop strings


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


class TextStream:
    """One row's text, built as its token ids arrive.

    :meth:`push` returns the text that is now safe to show ("" while part of a character, or what
    may begin a stop string, is held back); once ``stop`` is set (the stop string found) the row
    should be stopped, and nothing more comes out. :meth:`close` releases what is held at the end.
    """

    def __init__(self, tokenizer: Any, stop: str | Sequence[str] = ()) -> None:
        self._decoder = IncrementalDecoder(tokenizer)
        self._filter = _StopFilter([stop] if isinstance(stop, str) else stop)
        self.stop: str | None = None
        self.pieces: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def push(self, token: int) -> str:
        if self.stop is not None:
            return ""
        text, self.stop = self._filter.push(self._decoder.push([token]))
        return self._emit(text)

    def close(self) -> str:
        if self.stop is not None:
            return ""
        text, self.stop = self._filter.push(self._decoder.flush())
        if self.stop is None:
            text += self._filter.flush()
        return self._emit(text)

    def _emit(self, text: str) -> str:
        if text:
            self.pieces.append(text)
        return text


# --------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class GenerationResult:
    """Everything about one finished generation."""

    text: str  # the continuation, without the stop string
    token_ids: list[int]  # the generated ids; a stop token id is not included
    prompt_tokens: int  # tokens prefilled for this generation (0 when it started from a Prefix alone)
    stop_reason: str  # "stop_string", "stop_token", "max_tokens" or "context_full" (a GPT's window)
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


def _text_result(text: TextStream, row: RowResult) -> GenerationResult:
    reason, stop = (row.stop_reason, row.stop_token) if text.stop is None else ("stop_string", text.stop)
    return GenerationResult(
        text=text.text,
        token_ids=row.token_ids,
        prompt_tokens=row.prompt_tokens,
        stop_reason=reason,
        stop=stop,
        prompt_seconds=row.prompt_seconds,
        decode_seconds=row.decode_seconds,
        state=row.state,
        logits=row.logits,
    )


# --------------------------------------------------------------------------------------------
# Rows of text on the engine


def _stream(
    engine: Engine, texts: dict[int, TextStream], results: dict[int, GenerationResult]
) -> Iterator[tuple[int, str]]:
    """Step the engine until every row ends: yield (row, text piece), fill ``results``."""
    while engine.has_work:
        for event in engine.step():
            text = texts[event.row]
            piece = "" if event.token is None else text.push(event.token)
            row = event.result
            if row is None and text.stop is not None:
                row = engine.stop(event.row)  # its state has read the tokens that made the stop string
            if row is not None:
                piece += text.close()
                results[event.row] = _text_result(text, row)
            if piece:
                yield event.row, piece


def _encode(tokenizer: Any, prompt: str | Sequence[int]) -> list[int]:
    """Ids of a text prompt (refusing lone surrogates, which no tokenizer can encode) or the ids given."""
    if isinstance(prompt, str):
        return tokenizer.encode(check_utf8(prompt, "the prompt", InputError))
    return [int(t) for t in prompt]


def _prefill_chunk(prefill_chunk: int | None, chunk_len: int | None) -> int:
    """``chunk_len`` is the old name of ``prefill_chunk`` (it now names the WKV chunk only)."""
    if chunk_len is not None:
        if prefill_chunk is not None:
            raise TypeError("pass prefill_chunk only (chunk_len is its deprecated old name)")
        warnings.warn(
            "chunk_len= is deprecated for generation; use prefill_chunk= (prompt tokens per model call)",
            DeprecationWarning,
            stacklevel=3,
        )
        return chunk_len
    return DEFAULT_PREFILL_CHUNK if prefill_chunk is None else prefill_chunk


def _start(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    generators: Sequence[torch.Generator],
    *,
    max_tokens: int,
    stop: str | Sequence[str],
    stop_token_ids: Sequence[int] | None,
    state: Prefix | RecurrentState | None,
    keep_state: bool,
    prefill_chunk: int,
    sampling: dict[str, Any],
) -> tuple[Engine, dict[int, TextStream]]:
    """An engine holding one row per prompt, each with its text stream."""
    unknown = set(sampling) - SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"unknown generation arguments: {sorted(unknown)}")
    params = SamplingParams(**sampling)
    if not prompts:
        raise RwkvkitError("no prompts to generate from")
    if any(isinstance(p, str) for p in prompts):  # text: the tokenizer's ids must all be the model's
        check_vocab_fits(tokenizer, model)
    if stop_token_ids is None:
        eos = getattr(tokenizer, "eos_id", None)
        stop_token_ids = [] if eos is None else [eos]
    start = Prefix(state, None, 0) if isinstance(state, RecurrentState) else state
    engine = Engine(model, prefill_chunk=prefill_chunk)
    texts = {}
    for prompt, generator in zip(prompts, generators, strict=True):
        request = Request(
            prompt=_encode(tokenizer, prompt),
            params=params,
            max_tokens=max_tokens,
            stop_token_ids=stop_token_ids,
            generator=generator,
            start=start,
            keep_state=keep_state,
        )
        texts[engine.add(request)] = TextStream(tokenizer, stop)
    return engine, texts


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class Generation:
    """A streaming generation: iterate for text pieces; ``.result`` once the iteration is done.

    >>> gen = rwkvkit.generate(model, tokenizer, "The Eiffel tower is in", max_tokens=20)
    >>> for piece in gen:
    ...     print(piece, end="", flush=True)
    >>> gen.result.stop_reason, gen.result.generated_tokens_per_s

    ``finish()`` runs it to the end (or returns the result at once if it is already over).
    Nothing is computed until the first piece is asked for.
    """

    def __init__(self, engine: Engine, texts: dict[int, TextStream]) -> None:
        self._row = next(iter(texts))
        self._results: dict[int, GenerationResult] = {}
        self._events = _stream(engine, texts, self._results)
        self.result: GenerationResult | None = None

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> str:
        try:
            return next(self._events)[1]
        except StopIteration:
            self.result = self._results[self._row]
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
    prefill_chunk: int | None = None,
    chunk_len: int | None = None,
    **sampling: Any,
) -> Generation:
    """Stream the continuation of ``prompt`` as text pieces; the :class:`GenerationResult` is
    ``.result`` of the returned :class:`Generation` once it is exhausted (or ``.finish()``).

    - ``prompt``: text, or token ids; with ``state`` it continues from that state (it may then
      be empty if ``state`` is a :class:`Prefix`, which carries the next-token logits);
    - ``**sampling``: the fields of :class:`~rwkvkit.sampling.SamplingParams` (temperature, top_p,
      top_k, min_p, presence_penalty, frequency_penalty, penalty_decay, logit_bias, banned_tokens);
    - ``stop``: strings that end the generation, never emitted; ``stop_token_ids``: ids that end
      it (default: the tokenizer's end-of-text id, if it has one); ``max_tokens``: at most this many
      (a model with a fixed context, the GPT baseline, also stops when its window is full);
    - ``seed`` or ``generator``: the random stream (same seed, same inputs: same text);
    - ``keep_state``: put the state after the prompt and every generated token in the result, to
      continue from (costs one extra model step at the end);
    - ``prefill_chunk``: prompt tokens per model call (default 256; ``chunk_len`` is its
      deprecated old name).
    """
    rng = generator if generator is not None else make_generator(seed, _device(model))
    engine, texts = _start(
        model,
        tokenizer,
        [prompt],
        [rng],
        max_tokens=max_tokens,
        stop=stop,
        stop_token_ids=stop_token_ids,
        state=state,
        keep_state=keep_state,
        prefill_chunk=_prefill_chunk(prefill_chunk, chunk_len),
        sampling=sampling,
    )
    return Generation(engine, texts)


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
    prefill_chunk: int | None = None,
    chunk_len: int | None = None,
    **sampling: Any,
) -> list[GenerationResult]:
    """Generate from several prompts at once, one state row each; results in prompt order.

    Prompts of different lengths are prefilled separately (no padding, so no pad token can leak
    into a state) and then decoded together in one model call per token; rows that stop leave the
    batch. Row i samples from ``seed + i``, so it gives the same text as
    ``generate(..., seed=seed + i)`` alone (up to float rounding differences between batch sizes,
    which can only matter on near-ties). With ``state`` (batch 1) every prompt continues from it:
    ``prompts=[""] * n`` draws n samples from one :class:`Prefix`.
    """
    device = _device(model)
    generators = [make_generator(None if seed is None else seed + i, device) for i in range(len(prompts))]
    engine, texts = _start(
        model,
        tokenizer,
        list(prompts),
        generators,
        max_tokens=max_tokens,
        stop=stop,
        stop_token_ids=stop_token_ids,
        state=state,
        keep_state=keep_state,
        prefill_chunk=_prefill_chunk(prefill_chunk, chunk_len),
        sampling=sampling,
    )
    results: dict[int, GenerationResult] = {}
    for _ in _stream(engine, texts, results):
        pass
    return [results[row] for row in texts]


def prefill_text(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[int],
    state: Prefix | RecurrentState | None = None,
    prefill_chunk: int | None = None,
    *,
    chunk_len: int | None = None,
) -> Prefix:
    """Process a prompt once, to reuse it: ``generate(model, tok, "", state=prefix)`` many times."""
    ids = _encode(tokenizer, prompt)
    if not ids:
        if isinstance(state, Prefix):
            return state
        raise RwkvkitError("prefill_text: the prompt is empty")
    return prefill(model, ids, state, prefill_chunk=_prefill_chunk(prefill_chunk, chunk_len))
