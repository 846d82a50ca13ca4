"""The tasks: known answers from a model forced to a known distribution, the results table, and
LAMBADA scored as the official RWKV benchmark script scores it (tolerances: see test_eval_scorer.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from eval_models import (
    LO,
    P_NEXT,
    TEXT,
    UNIFORM,
    Bigram,
    bigram_logprob,
    successor_model,
    write_jsonl,
)
from torch import nn

from rwkvkit.eval import (
    Choice,
    Scorer,
    evaluate,
    evaluate_lambada,
    evaluate_multiple_choice,
    evaluate_perplexity,
    format_table,
    read_lambada,
    read_multiple_choice,
)
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.testing import random_rwkv4, random_rwkv4_state_dict
from rwkvkit.tokenizer import ByteTokenizer


def test_perplexity_known_distribution(tok: ByteTokenizer) -> None:
    model = successor_model("abcdefg")
    m = evaluate_perplexity(Scorer(model, tok), ["abcdefg"])
    # eos(0) -> 'a' is uniform (0 has no successor), then six designated successors.
    expected = UNIFORM + 6 * math.log(P_NEXT)
    assert m["tokens"] == 7 and m["bytes"] == 7
    assert m["nll_per_token"] == pytest.approx(-expected / 7, abs=1e-6)
    assert m["ppl"] == pytest.approx(math.exp(-expected / 7), rel=1e-6)
    assert m["bits_per_byte"] == pytest.approx(-expected / math.log(2) / 7, rel=1e-6)


def test_uniform_model_has_perplexity_of_its_vocabulary(tok: ByteTokenizer) -> None:
    model = Bigram(torch.full((256, 256), 1 / 256, dtype=torch.float64))
    for ctx_len in (None, 5):
        m = evaluate_perplexity(Scorer(model, tok, ctx_len=ctx_len), [TEXT, "xy"])
        assert m["ppl"] == pytest.approx(256, rel=1e-5)
        assert m["bits_per_byte"] == pytest.approx(8, rel=1e-5)  # byte tokens: one token per byte


def test_lambada_known_answers(tmp_path: Path, tok: ByteTokenizer) -> None:
    model = successor_model("ab cd")  # a->b, b->' ', ' '->c, c->d
    data = write_jsonl(tmp_path / "lambada.jsonl", [{"text": "xab cd"}, {"text": "ab dc"}])
    pairs = read_lambada(data)
    assert pairs == [("xab", " cd"), ("ab", " dc")]
    m = evaluate_lambada(Scorer(model, tok), pairs)
    ll_hit = 3 * math.log(P_NEXT)  # ' ', 'c', 'd' all the argmax: greedy
    ll_miss = math.log(P_NEXT) + LO + UNIFORM  # ' ' then 'd' (not ' '->c) then 'c' after 'd' (no successor)
    assert m["acc"] == 0.5
    assert m["ppl"] == pytest.approx(math.exp(-(ll_hit + ll_miss) / 2), rel=1e-5)


def test_multiple_choice_known_answers(tmp_path: Path, tok: ByteTokenizer) -> None:
    model = successor_model("ab cdc")  # ... c->d, d->c
    data = write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {"context": "ab", "choices": ["cd", "dc"], "label": 0},  # both metrics right
            {"context": "ab", "choices": ["x", "cdq"], "label": 1},  # the sum picks "x", per char "cdq"
            {"goal": "ab", "sol1": "dd", "sol2": "cdcd", "label": "1"},  # PIQA form, label as a string
        ],
    )
    items = read_multiple_choice(data)
    assert items[2] == Choice("Question: ab\nAnswer:", ("dd", "cdcd"), 1)

    def lp(ctx: str, cont: str) -> float:
        return bigram_logprob(model, tok.encode(ctx + cont)) - bigram_logprob(model, tok.encode(ctx))

    x, cdq = lp("ab", " x"), lp("ab", " cdq")
    assert x == pytest.approx(math.log(P_NEXT) + LO) and cdq == pytest.approx(3 * math.log(P_NEXT) + LO)
    assert x > cdq and x / 1 < cdq / 3  # the case where the two accuracies disagree
    m = evaluate_multiple_choice(Scorer(model, tok, batch_size=3), items)
    assert m == {"acc": pytest.approx(2 / 3), "acc_norm": 1.0, "acc_bytes": 1.0}


def test_evaluate_and_table(tmp_path: Path, rwkv: nn.Module, tok: ByteTokenizer) -> None:
    txt = tmp_path / "play.txt"
    txt.write_text(TEXT, encoding="utf-8")
    a = evaluate(rwkv, tok, "perplexity", txt, model_name="rwkv")
    b = evaluate(rwkv, tok, "perplexity", txt, ctx_len=8, model_name="rwkv-w8")
    assert a.mode == "stream" and b.mode == "window 8"
    assert a.metrics["bytes"] == len(TEXT.encode())
    table = format_table([a, b])
    assert "bits per byte" in table and "rwkv-w8" in table and "window 8" in table
    assert f"{a.metrics['bits_per_byte']:.4f}" in table
    json.dumps([a.to_dict(), b.to_dict()])


def test_lambada_as_the_official_benchmark_scores_it(tmp_path: Path, tok: ByteTokenizer) -> None:
    """The official package on the same weights, scored by the rule of RWKV's LAMBADA script:
    one forward over context + target, log-softmax at each target position, correct when every
    target token is the argmax; ppl = exp(-mean), acc = mean."""
    rwkv_pkg = pytest.importorskip("rwkv.model")
    cfg = RWKV4Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=48)
    path = tmp_path / "m.pth"
    torch.save(random_rwkv4_state_dict(cfg, seed=8), path)
    official = rwkv_pkg.RWKV(model=str(path.with_suffix("")), strategy="cpu fp32", verbose=False)
    texts = ["He looked at the sea and said the word sea", "A dog and a cat and a dog", "The end of the end"]
    data = write_jsonl(tmp_path / "lambada.jsonl", [{"text": t} for t in texts])
    xsum, xacc = 0.0, 0
    for t in texts:
        src, dst = tok.encode(t.rsplit(" ", 1)[0]), tok.encode(" " + t.rsplit(" ", 1)[1])
        out, _ = official.forward(src + dst, None, full_output=True)
        logp = out.double().log_softmax(-1)
        xsum += sum(float(logp[len(src) - 1 + i, d]) for i, d in enumerate(dst))
        xacc += all(int(out[len(src) - 1 + i].argmax()) == d for i, d in enumerate(dst))
    ours = evaluate(random_rwkv4(cfg, seed=8), tok, "lambada", data).metrics
    assert ours["ppl"] == pytest.approx(math.exp(-xsum / len(texts)), rel=1e-4)
    assert ours["acc"] == xacc / len(texts)
