"""The scorer: log-likelihoods of text under any model called as ``logits, state = model(tokens, state)``.

Two ways to read text:
- **stream**: a recurrent model (RWKV) reads each document as one long stream, the state carried
  from chunk to chunk, so memory stays bounded and every prediction sees the whole past;
- **window N**: every prediction sees at most N tokens, as a transformer with an N-token context
  does. Models with a fixed context (a ``config.n_ctx``, ``block_size``, ``max_seq_len``, ``n_positions`` or
  ``max_position_embeddings``) are always read this way; any model can be, with ``ctx_len=N``,
  so RWKV can be compared with a transformer like for like.

Log-likelihoods follow lm-evaluation-harness: natural-log sums over the continuation's tokens; a
continuation is tokenized on its own with its leading space, and whitespace at the end of a
context is moved to the start of the continuation (the harness's rule), so no token straddles the
boundary; an empty context is replaced by the end-of-text token. Rolling (perplexity) scores read
each document after an end-of-text token (so its first token is scored too), in the harness's
rolling windows when windowed (disjoint predicted spans, the last window given a full context).

Efficiency: requests that share a context read it once and score every continuation from a copy
of its state, the continuations batched together; other requests are batched longest first.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..engine import prefill
from ..errors import EvalDataError
from .loss import next_token_logprobs

# Window attributes of fixed-context models, looked up on ``model.config`` then on the model.
WINDOW_ATTRS = ("n_ctx", "block_size", "max_seq_len", "n_positions", "max_position_embeddings")
# At most this many float32 logits alive per forward call (128 MiB): bounds memory for any vocabulary.
LOGIT_BUDGET = 1 << 25


@dataclasses.dataclass(frozen=True)
class LogLikelihood:
    """log P(continuation | context): the sum over its tokens, and whether greedy decoding emits it."""

    logprob: float
    greedy: bool
    tokens: int


@dataclasses.dataclass(frozen=True)
class RollingScore:
    """log P(document) over its scored tokens, with the token and UTF-8 byte counts they cover."""

    logprob: float
    tokens: int
    bytes: int


def model_window(model: nn.Module) -> int | None:
    """The fixed context length of a model, or None for a recurrent model that has none."""
    for owner in (getattr(model, "config", None), model):
        for name in WINDOW_ATTRS:
            value = getattr(owner, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _clone_state(state: Any) -> Any:
    if hasattr(state, "clone"):
        return state.clone()
    return copy.deepcopy(state)


class Scorer:
    """Log-likelihoods of text under one model and tokenizer, the way the harness asks for them.

    ``ctx_len`` None reads recurrent models as one stream; an int reads in windows of that many
    tokens (required, or taken from the model, for models with a fixed context).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        ctx_len: int | None = None,
        batch_size: int = 8,
        tokens_per_call: int = 256,
        share_prefix: bool = True,
    ) -> None:
        native = model_window(model)
        if ctx_len is not None and ctx_len < 1:
            raise EvalDataError(f"ctx_len must be >= 1, got {ctx_len}")
        if native is not None and ctx_len is not None and ctx_len > native:
            raise EvalDataError(
                f"ctx_len={ctx_len} is longer than this model's context of {native} tokens; "
                f"pass --ctx-len {native} or less"
            )
        if batch_size < 1 or tokens_per_call < 1:
            raise EvalDataError(
                f"batch_size and tokens_per_call must be >= 1, got {batch_size}, {tokens_per_call}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.window = ctx_len if ctx_len is not None else native  # None: unbounded stream
        self.recurrent = native is None  # the state may be carried from one call to the next
        self.batch_size = batch_size
        self.tokens_per_call = tokens_per_call  # recurrent models: at most this many tokens per call
        self.share_prefix = share_prefix  # False: every request reads its context (for comparison)
        self.device = next(model.parameters()).device
        eos = getattr(tokenizer, "eos_id", None)
        self.prefix: list[int] = [] if eos is None else [int(eos)]

    @property
    def mode(self) -> str:
        return "stream" if self.window is None else f"window {self.window}"

    # -- tokens -----------------------------------------------------------------------------

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids; trailing context whitespace moves to the continuation."""
        n_space = len(context) - len(context.rstrip())
        if n_space:
            context, continuation = context[:-n_space], context[-n_space:] + continuation
        cont = list(self.tokenizer.encode(continuation))
        if not cont:
            raise EvalDataError(f"the continuation {continuation!r} encodes to no tokens")
        ctx = list(self.tokenizer.encode(context)) if context else list(self.prefix)
        if not ctx:
            raise EvalDataError(
                f"an empty context needs an end-of-text token to condition on, and the "
                f"{getattr(self.tokenizer, 'name', 'given')} tokenizer has none; give every example a context"
            )
        return ctx, cont

    def _fit_context(self, ctx: list[int], longest_cont: int) -> list[int]:
        """Cut the context from the left so context + continuation (minus its last token) fits the window."""
        if self.window is None:
            return ctx
        if longest_cont > self.window:
            raise EvalDataError(
                f"a continuation of {longest_cont} tokens does not fit a window of {self.window} tokens; "
                "raise --ctx-len or shorten the continuation"
            )
        return ctx[-(self.window + 1 - longest_cont) :]

    # -- forward passes ---------------------------------------------------------------------

    def _chunk(self, batch: int, length: int) -> int:
        """Tokens per forward call: bounded for recurrent models, the whole window otherwise."""
        if not self.recurrent:
            return length
        vocab = int(getattr(getattr(self.model, "config", None), "vocab_size", 0) or 65536)
        return max(1, min(self.tokens_per_call, LOGIT_BUDGET // (batch * vocab)))

    def prefix_state(self, ids: Sequence[int]) -> tuple[Any, Tensor]:
        """Read ``ids`` (B = 1) from a fresh state: (state after them, logits (V,) for what follows).

        The engine's prefill reads it, a bounded number of tokens per call."""
        prefix = prefill(self.model, list(ids), prefill_chunk=self._chunk(1, len(ids)))
        return prefix.state, prefix.logits[0]

    @torch.no_grad()
    def score_rows(
        self,
        rows: Sequence[Sequence[int]],
        first: Sequence[int],
        *,
        state: Any = None,
        last_logits: Tensor | None = None,
        on_scored: Callable[[int], None] | None = None,
    ) -> list[tuple[Tensor, Tensor]]:
        """Per row, log P and is-argmax of the tokens ``row[k]`` for ``k >= first[i]``.

        ``row[k]`` is predicted by the model output after ``row[k-1]``; ``row[0]`` (when
        ``first[i] == 0``) by ``last_logits[i]`` (B, V), the output that led to ``state``. Rows
        are right-padded into one batch; padding comes after every scored token, so it changes
        nothing that is read. Recurrent models read the batch in chunks, the state carried
        (:func:`rwkvkit.eval.loss.next_token_logprobs`, the loss routine training uses too).
        Returns float64 log-probabilities and bool greedy flags, each (n_scored,).
        """
        B, L = len(rows), max(len(r) for r in rows)
        lp = torch.zeros(B, L, dtype=torch.float64)  # lp[i, k]: log P(row[k]); column 0 from last_logits
        greedy = torch.zeros(B, L, dtype=torch.bool)
        if any(f == 0 for f in first):
            if last_logits is None:
                raise ValueError("scoring a row's first token needs last_logits")
            tgt0 = torch.tensor([r[0] for r in rows], device=last_logits.device)
            logits0 = last_logits.float()
            lp[:, 0] = (logits0.gather(-1, tgt0[:, None])[:, 0] - logits0.logsumexp(-1)).double().cpu()
            greedy[:, 0] = (logits0.argmax(-1) == tgt0).cpu()
        if L > 1:
            ids = torch.zeros(B, L, dtype=torch.long)
            scored = torch.zeros(B, L, dtype=torch.bool)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
                scored[i, max(first[i], 1) : len(r)] = True

            def told(s: int, e: int) -> None:
                if on_scored is not None:
                    on_scored(int(scored[:, s + 1 : e + 1].sum()))

            lp[:, 1:], greedy[:, 1:], _ = next_token_logprobs(
                self.model,
                ids.to(self.device),
                self._chunk(B, L - 1),
                state=state,
                carry_state=self.recurrent,
                on_call=told,
            )
        return [(lp[i, first[i] : len(r)], greedy[i, first[i] : len(r)]) for i, r in enumerate(rows)]

    # -- what the tasks and the harness ask for ---------------------------------------------

    def loglikelihood(
        self, pairs: Sequence[tuple[str, str]], progress: bool = False, desc: str = "loglikelihood"
    ) -> list[LogLikelihood]:
        """log P(continuation | context) for each pair, with greedy-match flags.

        Pairs that share a context are scored from copies of the state after it, so the context
        is read once; the rest are batched longest first.
        """
        encoded = [self.encode_pair(c, x) for c, x in pairs]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, _) in enumerate(encoded):
            groups.setdefault(tuple(ctx), []).append(i)
        out: list[LogLikelihood | None] = [None] * len(pairs)
        rows: list[tuple[int, list[int], int]] = []  # (request index, context + continuation, first scored)
        bar = _progress(len(pairs), desc, "req", progress)
        for ctx_key, idx in groups.items():
            conts = [encoded[i][1] for i in idx]
            ctx = self._fit_context(list(ctx_key), max(len(c) for c in conts))
            shared = self._from_shared_prefix(ctx, conts) if len(idx) > 1 and self.share_prefix else None
            if shared is not None:
                for i, score in zip(idx, shared, strict=True):
                    out[i] = score
                bar.update(len(idx))
            else:
                rows.extend((i, ctx + cont, len(ctx)) for i, cont in zip(idx, conts, strict=True))
        rows.sort(key=lambda r: -len(r[1]))
        for b in range(0, len(rows), self.batch_size):
            batch = rows[b : b + self.batch_size]
            scores = self.score_rows([r[1] for r in batch], [r[2] for r in batch])
            for (i, _, _), (lp, g) in zip(batch, scores, strict=True):
                out[i] = LogLikelihood(float(lp.sum()), bool(g.all()), len(lp))
            bar.update(len(batch))
        bar.close()
        return [o for o in out if o is not None]

    def _from_shared_prefix(self, ctx: list[int], conts: list[list[int]]) -> list[LogLikelihood] | None:
        """Read the context once; score each continuation from a copy of its state (an RNN's
        state or a transformer's KV cache). None when the model returns no state to continue from."""
        state, last = self.prefix_state(ctx)
        if state is None:
            return None
        scores: list[LogLikelihood] = []
        batch = self.batch_size if hasattr(state, "select") else 1
        for b in range(0, len(conts), batch):
            part = conts[b : b + batch]
            n = len(part)
            fanned = state.select([0] * n) if batch > 1 else _clone_state(state)
            results = self.score_rows(part, [0] * n, state=fanned, last_logits=last.expand(n, -1))
            scores.extend(LogLikelihood(float(lp.sum()), bool(g.all()), len(lp)) for lp, g in results)
        return scores

    def rolling(self, texts: Sequence[str], progress: bool = False) -> list[RollingScore]:
        """log P(text) for each document, read after an end-of-text token, as one stream or in windows.

        Without an end-of-text token the first token only conditions and its bytes are not counted.
        """
        docs = []
        for text in texts:
            ids = self.prefix + list(self.tokenizer.encode(text))
            unscored = 0 if self.prefix or not ids else len(_token_bytes(self.tokenizer, ids[:1]))
            docs.append((ids, len(text.encode("utf-8")) - unscored))
        rows: list[tuple[int, list[int], int]] = []  # (document, ids, first scored)
        for d, (ids, _) in enumerate(docs):
            if len(ids) < 2:
                continue
            if self.window is None:
                rows.append((d, ids, 1))
            else:
                rows.extend(
                    (d, ids[start:end], first - start)
                    for start, first, end in rolling_windows(len(ids), self.window)
                )
        total = sum(len(ids) - 1 for ids, _ in docs if len(ids) > 1)
        bar = _progress(total, "perplexity", "tok", progress)
        logprob = [0.0] * len(docs)
        rows.sort(key=lambda r: -len(r[1]))
        for b in range(0, len(rows), self.batch_size):
            batch = rows[b : b + self.batch_size]
            scores = self.score_rows([r[1] for r in batch], [r[2] for r in batch], on_scored=bar.update)
            for (d, _, _), (lp, _) in zip(batch, scores, strict=True):
                logprob[d] += float(lp.sum())
        bar.close()
        return [
            RollingScore(logprob[d], max(len(ids) - 1, 0), nbytes if len(ids) > 1 else 0)
            for d, (ids, nbytes) in enumerate(docs)
        ]


def rolling_windows(n: int, window: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """Windows over ids[0..n): (start, first, end): the model reads ids[start:end-1] (<= window
    tokens) and ids[first:end] are scored. Every position 1..n-1 is scored exactly once; the last
    window reaches back a full window (the harness's rolling windows when stride == window)."""
    stride = window if stride is None else stride
    out, first = [], 1
    while first < n:
        end = min(first + stride, n)
        out.append((max(0, end - 1 - window), first, end))
        first = end
    return out


def _token_bytes(tokenizer: Any, ids: list[int]) -> bytes:
    if hasattr(tokenizer, "decode_bytes"):
        return bytes(tokenizer.decode_bytes(ids))
    return tokenizer.decode(ids).encode("utf-8")


def _progress(total: int, desc: str, unit: str, enabled: bool) -> Any:
    # disable=None: a bar only on a terminal, never in a log file or a pipe
    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, disable=None if enabled else True, leave=False
    )
