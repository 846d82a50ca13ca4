"""Evaluation: the scorer (:mod:`.scorer`, on the loss routine of :mod:`.loss`), the data readers
(:mod:`.data`), the tasks (:mod:`.tasks`), the results table (:mod:`.table`), and the
lm-evaluation-harness adapter (:mod:`.harness`, imported on its own: it needs ``lm_eval``).

``rwkvkit.eval.evaluate(model, tokenizer, "lambada", "file.jsonl")`` returns an :class:`EvalResult`;
:class:`Scorer` gives the log-likelihoods themselves.
"""

from __future__ import annotations

from ..errors import EvalDataError
from .data import Choice, read_lambada, read_multiple_choice, read_texts
from .scorer import LogLikelihood, RollingScore, Scorer, model_window, rolling_windows
from .table import format_table
from .tasks import (
    TASKS,
    EvalResult,
    choice_continuation,
    evaluate,
    evaluate_lambada,
    evaluate_multiple_choice,
    evaluate_perplexity,
)

__all__ = [
    "TASKS",
    "Choice",
    "EvalDataError",
    "EvalResult",
    "LogLikelihood",
    "RollingScore",
    "Scorer",
    "choice_continuation",
    "evaluate",
    "evaluate_lambada",
    "evaluate_multiple_choice",
    "evaluate_perplexity",
    "format_table",
    "model_window",
    "read_lambada",
    "read_multiple_choice",
    "read_texts",
    "rolling_windows",
]
