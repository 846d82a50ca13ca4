"""Evaluation as the papers report it: perplexity and bits per byte, LAMBADA last-word accuracy,
multiple choice (PIQA-style), for any model called as ``logits, state = model(tokens, state)``.

Two ways to read text:
- **stream**: a recurrent model (RWKV) reads each document as one long stream, the state carried
  from chunk to chunk, so memory stays bounded and every prediction sees the whole past;
- **window N**: every prediction sees at most N tokens, as a transformer with an N-token context
  does. Models with a fixed context (a ``config.n_ctx``, ``block_size``, ``max_seq_len``, ``n_positions`` or
  ``max_position_embeddings``) are always read this way; any model can be, with ``ctx_len=N``,
  so RWKV can be compared with a transformer like for like.

The numbers follow lm-evaluation-harness and the official RWKV benchmark script:
- log-likelihoods are natural-log sums over the continuation's tokens; a continuation is
  tokenized on its own with its leading space, and whitespace at the end of a context is moved
  to the start of the continuation (the harness's rule), so no token straddles the boundary;
  an empty context is replaced by the end-of-text token;
- LAMBADA: context = text up to its last space, target = " " + last word; perplexity is
  ``exp(-mean over examples of the target's log-likelihood)`` and accuracy counts examples whose
  every target token is the argmax;
- multiple choice: accuracy of the argmax of summed log-likelihoods (``acc``), of
  log-likelihood per character of the choice (``acc_norm``, the harness's) and per UTF-8 byte
  (``acc_bytes``); PIQA items are asked as ``"Question: {goal}\\nAnswer:"`` like the harness;
- perplexity: documents are scored separately, each after an end-of-text token (so its first
  token is scored too); windows are the harness's rolling windows (disjoint predicted spans,
  the last window given a full context). Bits per byte = total nats / ln 2 / UTF-8 bytes scored.

Efficiency: multiple choice reads a context once and scores every choice from a copy of its
state, the choices batched together; other requests are batched longest first.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import RwkvkitError

TASKS = ("perplexity", "lambada", "multiple-choice")
# Window attributes of fixed-context models, looked up on ``model.config`` then on the model.
WINDOW_ATTRS = ("n_ctx", "block_size", "max_seq_len", "n_positions", "max_position_embeddings")
# At most this many float32 logits alive per forward call (128 MiB): bounds memory for any vocabulary.
LOGIT_BUDGET = 1 << 25


class EvalDataError(RwkvkitError):
    """An evaluation file or request cannot be used as given."""


# --------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class EvalResult:
    """One model on one task and data file."""

    task: str
    model: str
    data: str
    mode: str  # "stream" or "window N"
    tokenizer: str
    count: int  # documents (perplexity) or examples (lambada, multiple choice)
    metrics: dict[str, float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


# --------------------------------------------------------------------------------------------
# The scorer: token ids in, log-probabilities out


def model_window(model: nn.Module) -> int | None:
    """The fixed context length of a model, or None for a recurrent model that has none."""
    for owner in (getattr(model, "config", None), model):
        for name in WINDOW_ATTRS:
            value = getattr(owner, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _accepts_last_only(model: nn.Module) -> bool:
    try:
        return "last_only" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _clone_state(state: Any) -> Any:
    if hasattr(state, "clone"):
        return state.clone()
    import copy

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
        chunk_len: int = 256,
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
        if batch_size < 1 or chunk_len < 1:
            raise EvalDataError(f"batch_size and chunk_len must be >= 1, got {batch_size}, {chunk_len}")
        self.model = model
        self.tokenizer = tokenizer
        self.window = ctx_len if ctx_len is not None else native  # None: unbounded stream
        self.recurrent = native is None  # the state may be carried from one call to the next
        self.batch_size = batch_size
        self.chunk_len = chunk_len
        self.share_prefix = share_prefix  # False: every request reads its context (for comparison)
        self.device = next(model.parameters()).device
        # Reading a context needs only its last position's logits: skip the head elsewhere if the model can.
        self._last_only = {"last_only": True} if _accepts_last_only(model) else {}
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
        return max(1, min(self.chunk_len, LOGIT_BUDGET // (batch * vocab)))

    @torch.no_grad()
    def prefix_state(self, ids: Sequence[int]) -> tuple[Any, Tensor]:
        """Read ``ids`` (B = 1) from a fresh state: (state after them, logits (V,) for what follows)."""
        tokens = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        state, logits = None, None
        step = self._chunk(1, tokens.shape[1])
        for s in range(0, tokens.shape[1], step):
            logits, state = self.model(tokens[:, s : s + step], state, **self._last_only)
        assert logits is not None
        return state, logits[0, -1].float()

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
        nothing that is read. Recurrent models read the batch in chunks, the state carried.
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
            ids = ids.to(self.device)
            step = self._chunk(B, L - 1)
            for s in range(0, L - 1, step):
                # input positions s .. s+step-1 predict tokens s+1 .. s+step
                e = min(s + step, L - 1)
                logits, state = self.model(ids[:, s:e], state)
                target = ids[:, s + 1 : e + 1]
                logits = logits.float()
                lp[:, s + 1 : e + 1] = (
                    (logits.gather(-1, target[..., None])[..., 0] - logits.logsumexp(-1)).double().cpu()
                )
                greedy[:, s + 1 : e + 1] = (logits.argmax(-1) == target).cpu()
                if on_scored is not None:
                    on_scored(int(scored[:, s + 1 : e + 1].sum()))
                if not self.recurrent:
                    state = None
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
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled, leave=False)


# --------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass(frozen=True)
class Choice:
    """A multiple-choice item: the continuations are scored after ``context``."""

    context: str
    choices: tuple[str, ...]
    label: int


def _read_jsonl(path: Path, limit: int | None) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise EvalDataError(f"{path}: no such file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(
                    f"{path}:{lineno}: not valid JSON ({e.msg}); expected one object per line"
                ) from None
            if not isinstance(obj, dict):
                raise EvalDataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append((lineno, obj))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise EvalDataError(f"{path}: the file holds no examples")
    return rows


def _field(path: Path, lineno: int, obj: dict[str, Any], key: str, kind: type) -> Any:
    if key not in obj:
        raise EvalDataError(f"{path}:{lineno}: missing the field {key!r} (fields: {sorted(obj)})")
    value = obj[key]
    if kind is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise EvalDataError(f"{path}:{lineno}: {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _is_jsonl(path: Path) -> bool:
    if path.suffix.lower() in (".jsonl", ".json"):
        return True
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
    try:
        return isinstance(json.loads(first), dict) and "text" in json.loads(first)
    except json.JSONDecodeError:
        return False


def read_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """Documents for perplexity: a JSONL file of ``{"text": ...}`` or a plain UTF-8 text file (one document)."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: no such file")
    if _is_jsonl(path):
        return [_field(path, n, obj, "text", str) for n, obj in _read_jsonl(path, limit)]
    try:
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError as e:
        raise EvalDataError(f"{path}: not UTF-8 text ({e})") from None


def read_lambada(path: str | Path, limit: int | None = None) -> list[tuple[str, str]]:
    """LAMBADA JSONL -> (context, target) pairs: the target is " " + the text's last word."""
    path = Path(path)
    pairs = []
    for lineno, obj in _read_jsonl(path, limit):
        text = _field(path, lineno, obj, "text", str)
        if " " not in text.strip():
            raise EvalDataError(f"{path}:{lineno}: the text has no space, so no last word to predict")
        context, word = text.rsplit(" ", 1)
        pairs.append((context, " " + word))
    return pairs


def read_multiple_choice(path: str | Path, limit: int | None = None) -> list[Choice]:
    """PIQA JSONL (goal, sol1, sol2, label) or generic JSONL (context, choices, label)."""
    path = Path(path)
    items = []
    for lineno, obj in _read_jsonl(path, limit):
        if "goal" in obj:
            goal = _field(path, lineno, obj, "goal", str)
            choices = (_field(path, lineno, obj, "sol1", str), _field(path, lineno, obj, "sol2", str))
            context = f"Question: {goal}\nAnswer:"  # the harness's PIQA prompt
        elif "context" in obj:
            context = _field(path, lineno, obj, "context", str)
            raw = _field(path, lineno, obj, "choices", list)
            if len(raw) < 2 or not all(isinstance(c, str) and c for c in raw):
                raise EvalDataError(
                    f"{path}:{lineno}: 'choices' must be a list of at least two non-empty strings"
                )
            choices = tuple(raw)
        else:
            raise EvalDataError(
                f"{path}:{lineno}: neither PIQA (goal, sol1, sol2, label) nor generic (context, choices, "
                f"label) fields; got {sorted(obj)}"
            )
        label = _field(path, lineno, obj, "label", int)
        if not 0 <= label < len(choices):
            raise EvalDataError(f"{path}:{lineno}: label {label} is not an index into {len(choices)} choices")
        items.append(Choice(context, choices, label))
    return items


def choice_continuation(context: str, choice: str) -> str:
    """The harness's target delimiter: a space between context and choice, unless one is there."""
    if choice[:1].isspace() or context[-1:].isspace():
        return choice
    return " " + choice


# --------------------------------------------------------------------------------------------
# Tasks


def evaluate_perplexity(scorer: Scorer, texts: Sequence[str], progress: bool = False) -> dict[str, float]:
    """Token perplexity, nats per token and bits per UTF-8 byte over all documents together."""
    scores = scorer.rolling(texts, progress)
    tokens = sum(s.tokens for s in scores)
    nbytes = sum(s.bytes for s in scores)
    if tokens == 0:
        raise EvalDataError("nothing to score: every document is shorter than two tokens")
    nll = -sum(s.logprob for s in scores)
    return {
        "ppl": math.exp(nll / tokens),
        "bits_per_byte": nll / math.log(2) / max(nbytes, 1),
        "nll_per_token": nll / tokens,
        "tokens": float(tokens),
        "bytes": float(nbytes),
    }


def evaluate_lambada(
    scorer: Scorer, pairs: Sequence[tuple[str, str]], progress: bool = False
) -> dict[str, float]:
    """Target-word perplexity and greedy accuracy, as lm-eval's lambada_openai and RWKV's script."""
    scores = scorer.loglikelihood(pairs, progress, desc="lambada")
    n = len(scores)
    return {
        "ppl": math.exp(-sum(s.logprob for s in scores) / n),
        "acc": sum(s.greedy for s in scores) / n,
    }


def evaluate_multiple_choice(
    scorer: Scorer, items: Sequence[Choice], progress: bool = False
) -> dict[str, float]:
    """Accuracy by summed log-likelihood, and normalised per character (acc_norm) and per byte."""
    pairs = [(it.context, choice_continuation(it.context, c)) for it in items for c in it.choices]
    scores = iter(scorer.loglikelihood(pairs, progress, desc="multiple-choice"))
    hits = {"acc": 0, "acc_norm": 0, "acc_bytes": 0}
    for it in items:
        lls = [next(scores).logprob for _ in it.choices]
        norms = {
            "acc": lls,
            "acc_norm": [ll / len(c) for ll, c in zip(lls, it.choices, strict=True)],
            "acc_bytes": [ll / len(c.encode("utf-8")) for ll, c in zip(lls, it.choices, strict=True)],
        }
        for name, values in norms.items():
            hits[name] += int(max(range(len(values)), key=values.__getitem__) == it.label)
    return {name: h / len(items) for name, h in hits.items()}


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    task: str,
    data: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    ctx_len: int | None = None,
    model_name: str = "model",
    progress: bool = False,
) -> EvalResult:
    """Run one task on one data file; the model is any ``logits, state = model(tokens, state)``."""
    if task not in TASKS:
        raise EvalDataError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    scorer = Scorer(model, tokenizer, ctx_len=ctx_len, batch_size=batch_size)
    start = time.perf_counter()
    if task == "perplexity":
        texts = read_texts(data, limit)
        metrics, count = evaluate_perplexity(scorer, texts, progress), len(texts)
    elif task == "lambada":
        pairs = read_lambada(data, limit)
        metrics, count = evaluate_lambada(scorer, pairs, progress), len(pairs)
    else:
        items = read_multiple_choice(data, limit)
        metrics, count = evaluate_multiple_choice(scorer, items, progress), len(items)
    return EvalResult(
        task=task,
        model=model_name,
        data=str(data),
        mode=scorer.mode,
        tokenizer=str(getattr(tokenizer, "name", type(tokenizer).__name__)),
        count=count,
        metrics=metrics,
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------------------------
# The table


METRIC_LABELS = {
    "ppl": "perplexity",
    "bits_per_byte": "bits per byte",
    "nll_per_token": "nats per token",
    "tokens": "tokens",
    "bytes": "bytes",
    "acc": "accuracy",
    "acc_norm": "accuracy (per char)",
    "acc_bytes": "accuracy (per byte)",
}


def _fmt(name: str, value: float) -> str:
    if name in ("tokens", "bytes"):
        return f"{int(value):,}"
    if name.startswith("acc"):
        return f"{100 * value:.2f}%"
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"


def format_table(results: Sequence[EvalResult]) -> str:
    """The models side by side: one column per model, one row per metric."""
    if not results:
        return ""
    names = list(dict.fromkeys(k for r in results for k in r.metrics))
    header = ["", *[r.model for r in results]]
    body = [
        ["mode", *[r.mode for r in results]],
        ["tokenizer", *[r.tokenizer for r in results]],
        ["examples" if results[0].task != "perplexity" else "documents", *[str(r.count) for r in results]],
        *[
            [METRIC_LABELS.get(n, n), *[_fmt(n, r.metrics[n]) if n in r.metrics else "-" for r in results]]
            for n in names
        ],
        ["seconds", *[f"{r.seconds:.1f}" for r in results]],
    ]
    widths = [max(len(row[c]) for row in [header, *body]) for c in range(len(header))]
    line = lambda row: "  ".join(  # noqa: E731
        cell.ljust(w) if c == 0 else cell.rjust(w)
        for c, (cell, w) in enumerate(zip(row, widths, strict=True))
    )
    title = f"{results[0].task} on {results[0].data}"
    return "\n".join([title, line(header), "  ".join("-" * w for w in widths), *map(line, body)])


def iter_models(paths: Iterable[str]) -> Iterable[str]:
    """Column names for models: the path's last part, made unique."""
    seen: dict[str, int] = {}
    for p in paths:
        name = Path(p).name or p
        seen[name] = seen.get(name, 0) + 1
        yield name if seen[name] == 1 else f"{name} ({seen[name]})"


# --------------------------------------------------------------------------------------------
# The command line

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _tokenizer_for(model: nn.Module, name: str | None) -> Any:
    """The tokenizer named on the command line, else the checkpoint's (metadata, then vocabulary size)."""
    from ..cli.flags import tokenizer_name_for_model
    from ..tokenizer import load_tokenizer

    tokenizer = load_tokenizer(name or tokenizer_name_for_model(model))
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and tokenizer.vocab_size > vocab:
        raise EvalDataError(
            f"the {tokenizer.name} tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab}; "
            "pass the model's own tokenizer with --tokenizer"
        )
    return tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="PATH",
        help="checkpoint or run folder; give several times to compare models side by side "
        "(default: the bundled model)",
    )
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help="perplexity: .txt or JSONL {text}; lambada: JSONL {text}; "
        "multiple-choice: JSONL {goal,sol1,sol2,label} or {context,choices,label}",
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="only the first N examples or documents"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, metavar="B", help="rows per forward call (default 8)"
    )
    parser.add_argument(
        "--ctx-len",
        type=int,
        default=None,
        metavar="N",
        help="read in windows of N tokens, as a transformer with an N-token context does "
        "(default: one stream for RNNs, the model's own context for transformers)",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        metavar="NAME",
        help="world, 20b, byte or a vocab file (default: from the model)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), help="weight dtype (default fp32)")
    parser.add_argument(
        "--json", default=None, metavar="OUT", help="also write the results to this JSON file"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..fileio import atomic_write_bytes

    if args.limit is not None and args.limit < 1:
        raise EvalDataError(f"--limit must be >= 1, got {args.limit}")
    paths = args.model
    if not paths:
        from ..cli.flags import model_path_from_args

        paths = [str(model_path_from_args(argparse.Namespace(model=None)))]
    results = []
    for path, name in zip(paths, iter_models(paths), strict=True):
        model = load_model(path, device=args.device, dtype=DTYPES[args.dtype])
        tokenizer = _tokenizer_for(model, args.tokenizer)
        result = evaluate(
            model,
            tokenizer,
            args.task,
            args.data,
            limit=args.limit,
            batch_size=args.batch_size,
            ctx_len=args.ctx_len,
            model_name=name,
            progress=not args.no_progress,
        )
        results.append(result)
        del model
    print(format_table(results))
    if args.json:
        payload = json.dumps([r.to_dict() for r in results], indent=2) + "\n"
        atomic_write_bytes(args.json, payload.encode("utf-8"))
    return 0
