"""EleutherAI's lm-evaluation-harness (``lm_eval`` 0.4) on rwkvkit models, registered as ``rwkvkit``.

Importing this module registers the model class. The harness has no plugin discovery, so its
command line runs through this module, which registers first and then hands over::

    python -m rwkvkit.eval.harness run --model rwkvkit \\
        --model_args pretrained=RWKV-4-Pile-169M.pth,tokenizer=20b \\
        --tasks lambada_openai,piqa --batch_size 8

From Python, pass ``model="rwkvkit"`` with ``model_args`` to ``lm_eval.simple_evaluate``, or an
instance: ``lm_eval.simple_evaluate(model=RwkvkitLM(model=m, tokenizer=t), tasks=[...])``.

``model_args``: ``pretrained`` (any checkpoint ``rwkvkit.load_model`` reads), ``tokenizer``
(``world``, ``20b``, ``byte`` or a vocab file; default from the vocabulary size), ``device``,
``dtype`` (fp32, bf16, fp16), ``batch_size``, ``ctx_len`` (read in windows of that many tokens
instead of one stream, for a like-for-like comparison with a transformer), ``max_gen_toks``.

Scoring is :class:`rwkvkit.eval.scorer.Scorer`'s, so ``rwkvkit eval`` and the harness give the same
numbers; requests that share a context (multiple choice) read it once. ``generate_until`` decodes
greedily (the harness's default ``do_sample=False``) and stops at the ``until`` strings.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from torch import nn
from tqdm import tqdm

from ..checkpoint import load_model, tokenizer_for_model
from ..dtypes import dtype_from_name
from ..errors import EvalDataError
from ..generate import generate_text
from .scorer import Scorer

DEFAULT_BATCH = 8


def greedy_until(scorer: Scorer, context: str, until: list[str], max_tokens: int) -> str:
    """Greedy continuation of ``context``, cut before the first stop string or at end-of-text.

    Generation runs through the engine (rwkvkit.generate). A recurrent model reads the whole
    context as one stream; read in windows, the context keeps its last ``window - max_tokens``
    tokens so that context and continuation fit one window (the harness's own convention).
    """
    ids = list(scorer.tokenizer.encode(context)) if context else list(scorer.prefix)
    if not ids:
        raise EvalDataError(
            "generation from an empty context needs an end-of-text token; this tokenizer has none"
        )
    if scorer.window is not None:
        ids = ids[-max(1, scorer.window - max_tokens) :]
    result = generate_text(
        scorer.model,
        scorer.tokenizer,
        ids,
        temperature=0.0,
        max_tokens=max_tokens,
        stop=until,
        prefill_chunk=scorer.tokens_per_call,
    )
    return result.text


class RwkvkitLM(LM):
    """An rwkvkit model (RWKV or the GPT baseline) behind the harness's three request types."""

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Any = None,
        device: str | None = None,
        dtype: str = "fp32",
        batch_size: int | str | None = DEFAULT_BATCH,
        ctx_len: int | str | None = None,
        max_gen_toks: int | str = 256,
        **_ignored: Any,  # harness-wide options (max_batch_size, ...) that mean nothing here
    ) -> None:
        super().__init__()
        if model is None:
            if pretrained is None:
                raise EvalDataError("pass model_args pretrained=PATH (a checkpoint or run folder)")
            torch_dtype = dtype_from_name(dtype)
            if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
                device = "cpu"  # the harness's command line asks for cuda by default, GPU or not
            model = load_model(pretrained, device=device, dtype=torch_dtype)
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = tokenizer_for_model(model, tokenizer)
        batch = (
            DEFAULT_BATCH
            if batch_size in (None, "auto") or str(batch_size).startswith("auto")
            else int(batch_size)
        )
        self.scorer = Scorer(
            model, tokenizer, ctx_len=None if ctx_len in (None, "") else int(ctx_len), batch_size=batch
        )
        self.max_gen_toks = int(max_gen_toks)
        self._device = self.scorer.device

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.scorer.tokenizer, "name", "rwkvkit"))

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(req.args) for req in requests]
        scores = self.scorer.loglikelihood(pairs, progress=not disable_tqdm)  # type: ignore[arg-type]
        out = [(s.logprob, s.greedy) for s in scores]
        for pair, result in zip(pairs, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        texts = [req.args[0] for req in requests]
        out = [s.logprob for s in self.scorer.rolling(texts, progress=not disable_tqdm)]
        for text, result in zip(texts, out, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), result)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, desc="generate_until", file=sys.stderr, disable=disable_tqdm):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0) or 0) > 0:
                warnings.warn(
                    "rwkvkit's harness adapter decodes greedily; sampling settings are ignored", stacklevel=2
                )
            max_tokens = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            text = greedy_until(self.scorer, context, until, max_tokens)
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
            out.append(text)
        return out


if __name__ != "__main__":  # run as a script, the import in main() registers the module's own class
    register_model("rwkvkit")(RwkvkitLM)


def main() -> None:
    """The harness's own command line, with ``--model rwkvkit`` available."""
    from lm_eval.__main__ import cli_evaluate

    # Run as ``python -m``, this file is __main__, which does not register: importing it under its
    # own name registers RwkvkitLM exactly once (lm_eval's registry refuses a second class).
    import rwkvkit.eval.harness  # noqa: F401

    cli_evaluate()


if __name__ == "__main__":
    main()
