"""The tasks, scored as the papers report them: perplexity and bits per byte, LAMBADA last-word
accuracy, multiple choice (PIQA-style).

The numbers follow lm-evaluation-harness and the official RWKV benchmark script:
- LAMBADA: context = text up to its last space, target = " " + last word; perplexity is
  ``exp(-mean over examples of the target's log-likelihood)`` and accuracy counts examples whose
  every target token is the argmax;
- multiple choice: accuracy of the argmax of summed log-likelihoods (``acc``), of
  log-likelihood per character of the choice (``acc_norm``, the harness's) and per UTF-8 byte
  (``acc_bytes``); PIQA items are asked as ``"Question: {goal}\\nAnswer:"`` like the harness;
- perplexity: documents are scored separately (see :mod:`rwkvkit.eval.scorer`); bits per byte =
  total nats / ln 2 / UTF-8 bytes scored.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import EvalDataError
from ..tokenizer import check_vocab_fits
from .data import Choice, read_lambada, read_multiple_choice, read_texts
from .scorer import Scorer

TASKS = ("perplexity", "lambada", "multiple-choice")


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


def choice_continuation(context: str, choice: str) -> str:
    """The harness's target delimiter: a space between context and choice, unless one is there."""
    if choice[:1].isspace() or context[-1:].isspace():
        return choice
    return " " + choice


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
    check_vocab_fits(tokenizer, model)
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
