"""Evaluation: known answers from a model forced to a known distribution, and exact agreement with
a direct token-by-token computation on random RWKV weights.

Tolerances: the bigram model's answers are exact up to float32 log-softmax rounding (1e-5 per
token); RWKV sums compare the evaluator (chunked parallel WKV, batched, padded) with the model
called one token at a time (recurrent path), which agree to ~1e-6 per token in float32, so sums
over at most a few hundred tokens get 1e-4 absolute.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from rwkvkit.eval.scorer import (
    Choice,
    EvalDataError,
    Scorer,
    evaluate,
    evaluate_lambada,
    evaluate_multiple_choice,
    evaluate_perplexity,
    format_table,
    read_lambada,
    read_multiple_choice,
    read_texts,
    rolling_windows,
)
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.state import RecurrentState
from rwkvkit.testing import random_rwkv4, random_rwkv4_state_dict

REPO = Path(__file__).resolve().parents[1]

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak. Ünïcødé ✓\n"


class ByteTokenizer:
    """Bytes as tokens, end-of-text 0: the interface the evaluator needs, nothing more."""

    name = "byte"
    vocab_size = 256

    def __init__(self, eos_id: int | None = 0) -> None:
        self.eos_id = eos_id

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: list[int]) -> bytes:
        return bytes(ids)


@dataclasses.dataclass
class CounterState(RecurrentState):
    seen: Tensor  # (1, B, 1): tokens read so far; the bigram model needs no memory


class Bigram(nn.Module):
    """P(next | current) from a fixed table: every log-likelihood is known in closed form."""

    def __init__(self, probs: Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(probs.log())
        self.calls = 0

    def forward(
        self, tokens: Tensor | list[int], state: CounterState | None = None
    ) -> tuple[Tensor, CounterState]:
        t = torch.as_tensor(tokens, dtype=torch.long)
        t = t[None] if t.dim() == 1 else t
        self.calls += 1
        seen = torch.zeros(1, t.shape[0], 1) if state is None else state.seen
        return self.logits[t].float(), CounterState(seen + t.shape[1])


P_NEXT = 0.6  # probability of the designated successor; the rest is spread evenly


def successor_model(chain: str) -> Bigram:
    """Byte bigram: after each character of ``chain`` comes the next one with P_NEXT; bytes with
    no successor predict uniformly."""
    probs = torch.full((256, 256), 1 / 256, dtype=torch.float64)
    for a, b in zip(chain.encode(), chain.encode()[1:], strict=False):
        probs[a] = (1 - P_NEXT) / 255
        probs[a, b] = P_NEXT
    return Bigram(probs)


def bigram_logprob(model: Bigram, ids: list[int]) -> float:
    """The direct computation: sum of log P(ids[i+1] | ids[i]) from the table."""
    table = model.logits.detach().double().log_softmax(-1)
    return sum(float(table[a, b]) for a, b in itertools.pairwise(ids))


LO = math.log((1 - P_NEXT) / 255)  # an off-successor byte after a byte that has a successor
UNIFORM = math.log(1 / 256)


@pytest.fixture
def tok() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture(scope="module")
def rwkv() -> nn.Module:
    cfg = RWKV4Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=48, chunk_len=8)
    return random_rwkv4(cfg, seed=5)


_BRUTE: dict[tuple[int, tuple[int, ...]], list[float]] = {}


def brute_logprobs(model: nn.Module, ids: list[int]) -> list[float]:
    """log P(ids[i+1] | ids[:i+1]) with the model called one token at a time."""
    key = (id(model), tuple(ids))
    if key not in _BRUTE:
        _BRUTE[key] = _brute_logprobs(model, ids)
    return _BRUTE[key]


def _brute_logprobs(model: nn.Module, ids: list[int]) -> list[float]:
    out, state = [], None
    with torch.no_grad():
        for a, b in itertools.pairwise(ids):
            logits, state = model([a], state)
            out.append(float(logits[0, -1].double().log_softmax(-1)[b]))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Known answers: the bigram model


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


def test_shared_context_is_read_once(tok: ByteTokenizer) -> None:
    """Multiple choice: one forward for the context, then one batched call for all choices."""
    model = successor_model("ab cd")
    scorer = Scorer(model, tok, batch_size=8)
    item = Choice("ab" * 50, ("cd", "dc", "xyz", "c"), 0)
    model.calls = 0
    evaluate_multiple_choice(scorer, [item])
    assert model.calls == 2


# ---------------------------------------------------------------------------------------------
# Exact sums against a direct computation: random RWKV-4


def test_stream_perplexity_equals_token_by_token(rwkv: nn.Module, tok: ByteTokenizer) -> None:
    docs = [TEXT, "Speak.", "x"]  # "x": eos + one token; multi-byte characters count as their bytes
    direct = [sum(brute_logprobs(rwkv, [0, *tok.encode(d)])) for d in docs]
    scorer = Scorer(rwkv, tok, batch_size=2, chunk_len=7)  # odd chunks: state carried across calls
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
        windowed = Scorer(rwkv, tok, ctx_len=ctx_len, chunk_len=5).rolling([TEXT])[0]
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
    got = Scorer(rwkv, tok, batch_size=batch_size, chunk_len=4).loglikelihood(pairs)
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

    def forward(self, tokens: Tensor, state: object = None) -> tuple[Tensor, None]:
        assert state is None, "a window model is never handed a state"
        assert tokens.shape[-1] <= self.block_size, "read more tokens than its context"
        return self.inner(tokens, None)[0], None


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


# ---------------------------------------------------------------------------------------------
# Data files and results


def test_readers_and_errors(tmp_path: Path) -> None:
    txt = tmp_path / "play.txt"
    txt.write_text(TEXT, encoding="utf-8")
    assert read_texts(txt) == [TEXT]
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": "a b"}, {"text": "c d"}, {"text": "e f"}])
    assert read_texts(docs, limit=2) == ["a b", "c d"]
    (tmp_path / "bad.jsonl").write_text('{"text": "a b"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"bad.jsonl:2: not valid JSON"):
        read_lambada(tmp_path / "bad.jsonl")
    with pytest.raises(EvalDataError, match=r":1: missing the field 'text'"):
        read_lambada(write_jsonl(tmp_path / "x.jsonl", [{"txt": "a b"}]))
    with pytest.raises(EvalDataError, match="no last word"):
        read_lambada(write_jsonl(tmp_path / "y.jsonl", [{"text": "word"}]))
    with pytest.raises(EvalDataError, match="label 2 is not an index"):
        read_multiple_choice(
            write_jsonl(tmp_path / "z.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 2}])
        )
    with pytest.raises(EvalDataError, match="neither PIQA"):
        read_multiple_choice(write_jsonl(tmp_path / "w.jsonl", [{"question": "q"}]))
    with pytest.raises(EvalDataError, match="no such file"):
        read_texts(tmp_path / "missing.txt")
    with pytest.raises(EvalDataError, match="holds no examples"):
        read_lambada(write_jsonl(tmp_path / "empty.jsonl", []))


def test_empty_context_without_end_of_text_is_refused() -> None:
    model = successor_model("ab")
    scorer = Scorer(model, ByteTokenizer(eos_id=None))
    with pytest.raises(EvalDataError, match="end-of-text"):
        scorer.loglikelihood([("", "ab")])
    # Perplexity without an end-of-text token: the first byte conditions and is not counted.
    m = evaluate_perplexity(scorer, ["xab"])
    assert m["tokens"] == 2 and m["bytes"] == 2
    assert m["nll_per_token"] == pytest.approx(-(UNIFORM + math.log(P_NEXT)) / 2)


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


# ---------------------------------------------------------------------------------------------
# The command line


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "rwkvkit", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_compares_models_side_by_side(tmp_path: Path) -> None:
    cfg = RWKV4Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=48, chunk_len=8)
    paths = []
    for seed in (1, 2):
        paths.append(tmp_path / f"m{seed}.pth")
        torch.save(random_rwkv4_state_dict(cfg, seed=seed), paths[-1])
    play = tmp_path / "play.txt"
    play.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "res.json"
    r = run_cli(
        "eval", "--model", str(paths[0]), "--model", str(paths[1]), "--task", "perplexity",
        "--data", str(play), "--tokenizer", "byte", "--ctx-len", "16", "--json", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    results = json.loads(out.read_text())
    assert [x["model"] for x in results] == ["m1.pth", "m2.pth"]
    assert "m1.pth" in r.stdout and "m2.pth" in r.stdout and "bits per byte" in r.stdout
    model = random_rwkv4(cfg, seed=2)
    from rwkvkit import load_tokenizer

    expected = evaluate(model, load_tokenizer("byte"), "perplexity", play, ctx_len=16)
    assert results[1]["metrics"]["bits_per_byte"] == pytest.approx(
        expected.metrics["bits_per_byte"], rel=1e-6
    )
    assert results[1]["mode"] == "window 16"


def test_cli_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rwkvkit.cli import main

    path = tmp_path / "m.pth"
    torch.save(
        random_rwkv4_state_dict(RWKV4Config(vocab_size=256, n_layer=1, n_embd=16, ffn_dim=32), seed=1), path
    )
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}] * 3)
    assert (
        main(["eval", "--model", str(path), "--task", "multiple-choice", "--data", str(mc), "--limit", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "accuracy" in out and "examples" in out and " 2" in out
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"txt": "no text field"}])
    assert main(["eval", "--model", str(path), "--task", "lambada", "--data", str(bad)]) == 2
    assert "missing the field 'text'" in capsys.readouterr().err


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
