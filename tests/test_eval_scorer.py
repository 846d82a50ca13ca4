"""The scorer: exact agreement with a direct token-by-token computation on random RWKV weights,
windows, shared prefixes, batching, greedy flags, fixed-context models.

Tolerances: the bigram model's answers are exact up to float32 log-softmax rounding (1e-5 per
token); RWKV sums compare the evaluator (chunked parallel WKV, batched, padded) with the model
called one token at a time (recurrent path), which agree to ~1e-6 per token in float32, so sums
over at most a few hundred tokens get 1e-4 absolute.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from eval_models import (
    P_NEXT,
    TEXT,
    UNIFORM,
    NoEosByteTokenizer,
    brute_logprobs,
    successor_model,
    write_jsonl,
)
from torch import Tensor, nn

from rwkvkit.eval import (
    Choice,
    EvalDataError,
    Scorer,
    evaluate,
    evaluate_multiple_choice,
    evaluate_perplexity,
    rolling_windows,
)
from rwkvkit.tokenizer import ByteTokenizer


def test_shared_context_is_read_once(tok: ByteTokenizer) -> None:
    """Multiple choice: one forward for the context, then one batched call for all choices."""
    model = successor_model("ab cd")
    scorer = Scorer(model, tok, batch_size=8)
    item = Choice("ab" * 50, ("cd", "dc", "xyz", "c"), 0)
    model.calls = 0
    evaluate_multiple_choice(scorer, [item])
    assert model.calls == 2


def test_stream_perplexity_equals_token_by_token(rwkv: nn.Module, tok: ByteTokenizer) -> None:
    docs = [TEXT, "Speak.", "x"]  # "x": eos + one token; multi-byte characters count as their bytes
    direct = [sum(brute_logprobs(rwkv, [0, *tok.encode(d)])) for d in docs]
    scorer = Scorer(rwkv, tok, batch_size=2, tokens_per_call=7)  # odd chunks: state carried across calls
    scores = scorer.rolling(docs)
    for s, d, doc in zip(scores, direct, docs, strict=True):
        assert s.logprob == pytest.approx(d, abs=1e-4)
        assert s.tokens == s.bytes == len(doc.encode())
    m = evaluate_perplexity(scorer, docs)
    assert m["bits_per_byte"] == pytest.approx(-sum(direct) / math.log(2) / m["bytes"], rel=1e-6)


def test_window_longer_than_text_equals_stream(rwkv: nn.Module, tok: ByteTokenizer) -> None:
    n = len(tok.encode(TEXT)) + 1
    stream = Scorer(rwkv, tok).rolling([TEXT])[0]
    for ctx_len in (n - 1, n, 4 * n):  # n - 1 tokens of input is the whole text
        windowed = Scorer(rwkv, tok, ctx_len=ctx_len, tokens_per_call=5).rolling([TEXT])[0]
        assert windowed.logprob == pytest.approx(stream.logprob, abs=1e-4)
        assert windowed.tokens == stream.tokens


def test_windows_equal_direct_windows(rwkv: nn.Module, tok: ByteTokenizer) -> None:
    """Each window starts from a fresh state and sees at most ctx_len tokens."""
    ids = [0, *tok.encode(TEXT)]
    ctx_len = 16
    direct = 0.0
    for start, first, end in rolling_windows(len(ids), ctx_len):
        assert end - 1 - start <= ctx_len
        window = brute_logprobs(rwkv, ids[start:end])
        direct += sum(window[first - start - 1 :])
    got = Scorer(rwkv, tok, ctx_len=ctx_len, batch_size=3).rolling([TEXT])[0]
    assert got.logprob == pytest.approx(direct, abs=1e-4)


def test_rolling_windows_cover_each_position_once() -> None:
    # The harness's example: 10 tokens after a prefix, max length 4.
    assert rolling_windows(11, 4) == [(0, 1, 5), (4, 5, 9), (6, 9, 11)]
    for n, w in [(2, 1), (50, 7), (8, 100), (33, 3)]:
        scored = [k for _, first, end in rolling_windows(n, w) for k in range(first, end)]
        assert scored == list(range(1, n))
        assert all(end - 1 - start <= w for start, _, end in rolling_windows(n, w))


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_loglikelihood_equals_direct(rwkv: nn.Module, tok: ByteTokenizer, batch_size: int) -> None:
    pairs = [
        ("Before we proceed", " any further"),
        ("Before we proceed", " no further"),  # shares the context: the prefix-state path
        ("Before we proceed", " x"),
        ("All:\nSpeak,", " speak."),  # alone: the batched-rows path
        ("hear me ", "speak"),  # trailing space moves into the continuation
        ("", "Citizen"),  # empty context: read after end-of-text
    ]
    got = Scorer(rwkv, tok, batch_size=batch_size, tokens_per_call=4).loglikelihood(pairs)
    for (ctx, cont), score in zip(pairs, got, strict=True):
        if ctx.endswith(" "):
            ctx, cont = ctx.rstrip(" "), " " + cont
        ctx_ids = tok.encode(ctx) if ctx else [0]
        lps = brute_logprobs(rwkv, ctx_ids + tok.encode(cont))[len(ctx_ids) - 1 :]
        assert score.tokens == len(tok.encode(cont))
        assert score.logprob == pytest.approx(sum(lps), abs=1e-4)


def test_shared_prefix_equals_separate_reads(rwkv: nn.Module, tok: ByteTokenizer) -> None:
    pairs = [("Before we proceed any further,", c) for c in (" hear me", " speak", " x", " hear")]
    for ctx_len in (None, 12):
        shared = Scorer(rwkv, tok, ctx_len=ctx_len, batch_size=3).loglikelihood(pairs)
        separate = Scorer(rwkv, tok, ctx_len=ctx_len, share_prefix=False).loglikelihood(pairs)
        for a, b in zip(shared, separate, strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4) and a.greedy == b.greedy


def test_greedy_flag_matches_argmax(rwkv: nn.Module, tok: ByteTokenizer) -> None:
    """Build the continuation from the model's own argmax: greedy; change one byte: not greedy."""
    ctx = tok.encode("All:\nSpeak")
    ids, state = list(ctx), None
    with torch.no_grad():
        logits, state = rwkv(ids, None)
        for _ in range(4):
            nxt = int(logits[0, -1].argmax())
            ids.append(nxt)
            logits, state = rwkv([nxt], state)
    greedy_cont = bytes(ids[len(ctx) :])
    other = bytes([*greedy_cont[:-1], (greedy_cont[-1] + 1) % 128])
    as_text = lambda b: b.decode("latin-1")  # noqa: E731

    class Latin1(ByteTokenizer):  # arbitrary bytes as one character each
        def encode(self, text: str) -> list[int]:
            return list(text.encode("latin-1"))

    scorer = Scorer(rwkv, Latin1())
    hit, miss = scorer.loglikelihood([("All:\nSpeak", as_text(greedy_cont)), ("All:\nSpeak", as_text(other))])
    assert hit.greedy and not miss.greedy
    assert hit.logprob > miss.logprob


def test_windowed_loglikelihood_cuts_context_from_the_left(rwkv: nn.Module, tok: ByteTokenizer) -> None:
    ctx, conts = "Before we proceed any further", [" hear", " me"]
    W = 10
    got = Scorer(rwkv, tok, ctx_len=W).loglikelihood([(ctx, c) for c in conts])
    keep = tok.encode(ctx)[-(W + 1 - len(" hear")) :]  # the same cut for both choices
    for cont, score in zip(conts, got, strict=True):
        lps = brute_logprobs(rwkv, keep + tok.encode(cont))[len(keep) - 1 :]
        assert len(keep) + len(tok.encode(cont)) - 1 <= W
        assert score.logprob == pytest.approx(sum(lps), abs=1e-4)
    with pytest.raises(EvalDataError, match="does not fit a window"):
        Scorer(rwkv, tok, ctx_len=3).loglikelihood([("a", " long continuation")])


# ---------------------------------------------------------------------------------------------
# A model with a fixed context, like the GPT baseline


class Windowed(nn.Module):
    """RWKV behind a transformer's interface: a block size, a fresh start on every call."""

    def __init__(self, inner: nn.Module, block_size: int) -> None:
        super().__init__()
        self.inner = inner
        self.config = dataclasses.replace(inner.config)
        object.__setattr__(self, "block_size", block_size)

    def forward(
        self, tokens: Tensor, state: object = None, *, last_only: bool = False
    ) -> tuple[Tensor, None]:
        assert state is None, "a window model is never handed a state"
        assert tokens.shape[-1] <= self.block_size, "read more tokens than its context"
        return self.inner(tokens, None, last_only=last_only)[0], None


def test_fixed_context_model_is_read_in_windows(rwkv: nn.Module, tok: ByteTokenizer, tmp_path: Path) -> None:
    gpt_like = Windowed(rwkv, block_size=12)
    docs = [TEXT, "Speak, speak."]
    as_gpt = Scorer(gpt_like, tok, batch_size=4)
    assert as_gpt.mode == "window 12" and not as_gpt.recurrent
    as_rnn = Scorer(rwkv, tok, ctx_len=12)
    for a, b in zip(as_gpt.rolling(docs), as_rnn.rolling(docs), strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
    pairs = [("Before we proceed any further,", c) for c in (" hear", " me", " speak")] + [("", "All")]
    for a, b in zip(as_gpt.loglikelihood(pairs), as_rnn.loglikelihood(pairs), strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4) and a.greedy == b.greedy
    data = write_jsonl(tmp_path / "lambada.jsonl", [{"text": "Before we proceed any further"}])
    assert evaluate(gpt_like, tok, "lambada", data).metrics["ppl"] > 1
    with pytest.raises(EvalDataError, match="longer than this model's context"):
        Scorer(gpt_like, tok, ctx_len=13)


def test_empty_context_without_end_of_text_is_refused() -> None:
    model = successor_model("ab")
    scorer = Scorer(model, NoEosByteTokenizer())
    with pytest.raises(EvalDataError, match="end-of-text"):
        scorer.loglikelihood([("", "ab")])
    # Perplexity without an end-of-text token: the first byte conditions and is not counted.
    m = evaluate_perplexity(scorer, ["xab"])
    assert m["tokens"] == 2 and m["bytes"] == 2
    assert m["nll_per_token"] == pytest.approx(-(UNIFORM + math.log(P_NEXT)) / 2)


def test_boundary_with_the_pile_tokenizer(rwkv: nn.Module) -> None:
    """With the 20B BPE, encoding context and " word" apart gives the harness's whole-string split."""
    from rwkvkit import load_tokenizer

    tok = load_tokenizer("20b")
    scorer = Scorer(rwkv, tok)
    pairs = [
        ("He looked at the sea and said the word", " sea"),
        ("The quick brown fox jumps over the lazy ", "dog"),  # trailing space joins the target
        ("Question: How do I open a jar?\nAnswer:", " Twist the lid counter-clockwise."),
        ("", " alone"),
    ]
    for ctx, cont in pairs:
        ctx_ids, cont_ids = scorer.encode_pair(ctx, cont)
        whole = tok.encode(ctx + cont)
        if ctx:
            assert ctx_ids + cont_ids == whole
            assert tok.decode(cont_ids) == (" " + cont if ctx.endswith(" ") else cont)
        else:
            assert ctx_ids == [tok.eos_id] and cont_ids == whole


def test_gpt_baseline_windows_and_kv_prefix(tok: ByteTokenizer) -> None:
    """The GPT baseline: read in windows of its n_ctx, its KV cache shared by a context's choices,
    each score equal to one full forward pass over context + continuation."""
    gpt = pytest.importorskip("rwkvkit.models.gpt")
    torch.manual_seed(0)
    cfg = gpt.GPTConfig(vocab_size=256, n_layer=2, n_embd=32, n_head=4, ffn_dim=64, n_ctx=24)
    model = gpt.GPT(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    scorer = Scorer(model, tok, batch_size=2)
    assert scorer.mode == "window 24" and not scorer.recurrent
    pairs = [("Before we proceed any further,", c) for c in (" hear", " me speak", " x")] + [
        ("All:", " Speak")
    ]
    got = scorer.loglikelihood(pairs)
    for (ctx, cont), score in zip(pairs, got, strict=True):
        ctx_ids = (
            tok.encode(ctx)[-(24 + 1 - len(" me speak")) :] if ctx.startswith("Before") else tok.encode(ctx)
        )
        ids = ctx_ids + tok.encode(cont)
        with torch.no_grad():
            logp = model(ids[:-1])[0][0].double().log_softmax(-1)
        direct = sum(float(logp[k - 1, ids[k]]) for k in range(len(ctx_ids), len(ids)))
        assert score.logprob == pytest.approx(direct, abs=1e-4)
    windows = Scorer(model, tok, ctx_len=8).rolling([TEXT])[0]
    ids = [0, *tok.encode(TEXT)]
    direct = 0.0
    with torch.no_grad():
        for start, first, end in rolling_windows(len(ids), 8):
            logp = model(ids[start : end - 1])[0][0].double().log_softmax(-1)
            direct += sum(float(logp[k - start - 1, ids[k]]) for k in range(first, end))
    assert windows.logprob == pytest.approx(direct, abs=1e-4)
