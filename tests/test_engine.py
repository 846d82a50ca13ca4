"""The id-only engine: batched rows equal single runs, rows joining and leaving between steps,
per-row stops, chunked prefill interleaved with decoding, kept states, logprobs, windows.

Two kinds of model: a mock whose logits are an exact function of the ids read (through a hash in its
own tiny state), so equalities are exact and every model call is counted; and random-weight models
of every version (RWKV-4/5/6/7 and the GPT baseline), where batched and single rows go through
different matmul shapes: their tokens must still agree (the weights and seeds are fixed, so a
near-tie that could flip a token would show up as a reproducible failure, not a flaky one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from rwkvkit.engine import Engine, Prefix, Request, RowResult, prefill
from rwkvkit.errors import RwkvkitError
from rwkvkit.models.gpt import GPT, GPTConfig
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.sampling import SamplingParams
from rwkvkit.state import RecurrentState
from rwkvkit.testing import random_rwkv4, random_rwkv5, random_rwkv6, random_rwkv7

# --------------------------------------------------------------------------------------------
# A mock model: logits from the ids read so far, row by row, exactly

HASH_MOD = 2_147_483_647.0  # h * 1_000_003 + id stays below 2**53: float64 holds it exactly


@dataclasses.dataclass
class MockState(RecurrentState):
    read: Tensor  # (1, B, 2) float64: a hash of the ids read, and how many

    version: ClassVar[str] = "mock"


@dataclasses.dataclass(frozen=True)
class MockConfig:
    vocab_size: int = 40
    n_ctx: int | None = None  # set: the model refuses to read past this many ids, like a GPT


class MockModel(nn.Module):
    def __init__(self, config: MockConfig = MockConfig()) -> None:
        super().__init__()
        self.config = config
        self.anchor = nn.Parameter(torch.zeros(1))  # the engine finds the device through it
        self.calls: list[tuple[str, int, int]] = []  # ("forward" or "step", B, T)

    def _read(self, read: Tensor, ids: Tensor) -> Tensor:
        h = torch.remainder(read[..., 0] * 1_000_003 + ids.double() + 1, HASH_MOD)
        n = read[..., 1] + 1
        if self.config.n_ctx is not None and int(n.max()) > self.config.n_ctx:
            raise AssertionError("the engine drove the model past its window")
        return torch.stack([h, n], -1)

    def _logits(self, read: Tensor) -> Tensor:  # (1, B, 2) -> (B, V)
        h = read[0, :, :1]
        v = torch.arange(self.config.vocab_size, dtype=torch.float64)
        return (3 * torch.sin(h * 1e-3 + v * 0.7 + torch.remainder(h, 97) * v * 0.013)).float()

    def forward(
        self, tokens: Tensor, state: MockState | None = None, *, last_only: bool = False
    ) -> tuple[Tensor, MockState]:
        B, T = tokens.shape
        self.calls.append(("forward", B, T))
        read = torch.zeros(1, B, 2, dtype=torch.float64) if state is None else state.read
        logits = []
        for t in range(T):
            read = self._read(read, tokens[:, t][None])
            logits.append(self._logits(read))
        out = torch.stack(logits, 1)
        return (out[:, -1:] if last_only else out), MockState(read)

    def step(self, tokens: Tensor, state: MockState) -> tuple[Tensor, MockState]:
        self.calls.append(("step", tokens.shape[0], 1))
        read = self._read(state.read, tokens[None])
        return self._logits(read), MockState(read)


# --------------------------------------------------------------------------------------------
# Real models of every version, random weights


def _gpt(n_ctx: int = 256) -> GPT:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=2, ffn_dim=64, n_ctx=n_ctx)).eval()


REAL: dict[str, Callable[[], nn.Module]] = {
    "rwkv4": lambda: random_rwkv4(
        RWKV4Config(vocab_size=64, n_layer=2, n_embd=32, ffn_dim=64, chunk_len=8), 1
    ),
    "rwkv5": lambda: random_rwkv5(
        RWKV5Config(vocab_size=64, n_layer=2, n_embd=32, ffn_dim=64, head_size=16), 1
    ),
    "rwkv6": lambda: random_rwkv6(
        RWKV6Config(vocab_size=64, n_layer=2, n_embd=32, ffn_dim=64, head_size=16), 1
    ),
    "rwkv7": lambda: random_rwkv7(
        RWKV7Config(vocab_size=64, n_layer=2, n_embd=32, ffn_dim=64, head_size=16), 1
    ),
    "gpt": _gpt,
}
ALL = ["mock", *REAL]


@pytest.fixture(scope="module", params=ALL)
def model(request: pytest.FixtureRequest) -> nn.Module:
    return MockModel() if request.param == "mock" else REAL[request.param]()


def exact(model: nn.Module) -> bool:
    return isinstance(model, MockModel)


def assert_states_close(a: RecurrentState, b: RecurrentState, exact_match: bool) -> None:
    for name, t in a.tensors().items():
        if exact_match:
            assert torch.equal(t, b.tensors()[name]), name
        else:  # the parallel (prefill) and one-token paths differ by float rounding only
            torch.testing.assert_close(t, b.tensors()[name], rtol=1e-4, atol=1e-4, msg=name)


# --------------------------------------------------------------------------------------------
# Helpers


def ids(n: int, seed: int, vocab: int = 40) -> list[int]:
    return torch.randint(1, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def run(model: nn.Module, requests: Sequence[Request], **engine_kw) -> list[RowResult]:
    """All requests in one engine, added at once; results in request order."""
    engine = Engine(model, **engine_kw)
    rows = [engine.add(r) for r in requests]
    results = {e.row: e.result for e in engine.run() if e.result is not None}
    return [results[r] for r in rows]


def alone(model: nn.Module, request: Request, **engine_kw) -> RowResult:
    return run(model, [request], **engine_kw)[0]


MIXED = [  # per-row sampling settings, all different
    SamplingParams(temperature=0),
    SamplingParams(temperature=1.0, top_p=0.9),
    SamplingParams(temperature=0.7, top_k=10, presence_penalty=0.5, frequency_penalty=0.3),
    SamplingParams(temperature=1.2, min_p=0.05, logit_bias={3: 2.0}, banned_tokens=[5]),
]


def mixed_requests(vocab: int = 40, **kw) -> list[Request]:
    lengths, max_tokens = [3, 11, 1, 7], [6, 12, 9, 12]
    return [
        Request(prompt=ids(n, 10 + i, vocab), params=p, max_tokens=m, seed=100 + i, **kw)
        for i, (n, p, m) in enumerate(zip(lengths, MIXED, max_tokens, strict=True))
    ]


# --------------------------------------------------------------------------------------------
# Batching


def test_batched_rows_equal_single_runs(model: nn.Module) -> None:
    """Greedy and seeded sampling, each row with its own settings, ragged prompts: the batch gives
    every row the tokens it gets alone."""
    vocab = model.config.vocab_size
    requests = [
        *mixed_requests(vocab),
        Request(prompt=ids(5, 20, vocab), params=MIXED[1], max_tokens=12, seed=7),
    ]
    together = run(model, requests)
    for req, res in zip(requests, together, strict=True):
        single = alone(model, req)
        assert res.token_ids == single.token_ids
        assert (res.stop_reason, res.prompt_tokens) == (single.stop_reason, len(req.prompt))
    assert len({tuple(r.token_ids) for r in together}) == len(requests)  # the rows did differ


def test_one_batched_model_call_per_step() -> None:
    model = MockModel()
    engine = Engine(model)
    for r in mixed_requests():
        engine.add(r)
    engine.step()  # prefills all four short prompts (22 tokens < one chunk), then one decode call
    assert [c for c in model.calls if c[0] == "forward"] == [("forward", 1, n) for n in (3, 11, 1, 7)]
    assert model.calls[-1] == ("step", 4, 1)
    model.calls.clear()
    while engine.has_work:
        live = engine.num_decoding
        events = engine.step()
        steps = [c for c in model.calls if c[0] == "step"]
        assert len(steps) <= 1 and all(c[1] <= live for c in steps)
        assert len({e.row for e in events if e.token is not None}) == len(
            [e for e in events if e.token is not None]
        )
        model.calls.clear()


def test_rows_joining_mid_decode_equal_running_alone(model: nn.Module) -> None:
    vocab = model.config.vocab_size
    first, second, third = mixed_requests(vocab)[:3]
    third = dataclasses.replace(third, prompt=ids(19, 33, vocab))  # several prefill chunks
    engine = Engine(model, prefill_chunk=4)
    results: dict[int, RowResult] = {}

    def steps(n: int) -> None:
        for _ in range(n):
            results.update({e.row: e.result for e in engine.step() if e.result is not None})

    a = engine.add(first)
    steps(3)
    b = engine.add(second)
    steps(2)
    c = engine.add(third)
    while engine.has_work:
        steps(1)
    for row, req in ((a, first), (b, second), (c, third)):
        assert results[row].token_ids == alone(model, req, prefill_chunk=4).token_ids


def test_max_batch_bounds_the_rows_decoding_at_once() -> None:
    model = MockModel()
    requests = mixed_requests() * 2
    results = run(model, requests, max_batch=2)
    assert max(c[1] for c in model.calls if c[0] == "step") == 2
    for req, res in zip(requests, results, strict=True):
        assert res.token_ids == alone(MockModel(), req).token_ids


# --------------------------------------------------------------------------------------------
# Rows leaving: stop tokens, max tokens, stop and cancel


def test_stop_tokens_and_max_tokens_per_row(model: nn.Module) -> None:
    vocab = model.config.vocab_size
    greedy = SamplingParams(temperature=0)
    prompts = [ids(4, 40, vocab), ids(9, 97, vocab), ids(6, 42, vocab)]  # the 2nd: no greedy loop at once
    base = [Request(prompt=p, params=greedy, max_tokens=10) for p in prompts]
    free = [alone(model, r).token_ids for r in base]
    # row 0 runs on; row 1 stops at 3 tokens, row 2 at the first token it has not produced before,
    # row 3 at 0, row 4 at 3 tokens, its kept state read from the middle of the batch
    k = next(i for i, t in enumerate(free[1]) if i and t not in free[1][:i])
    requests = [
        base[0],
        dataclasses.replace(base[0], max_tokens=3),
        dataclasses.replace(base[1], stop_token_ids=[free[1][k]], keep_state=True),
        dataclasses.replace(base[2], max_tokens=0, keep_state=True),
        dataclasses.replace(base[2], max_tokens=3, keep_state=True),
    ]
    _, capped, stopped, empty, kept = run(model, requests)
    assert capped.token_ids == free[0][:3] and capped.stop_reason == "max_tokens" and capped.state is None
    assert stopped.token_ids == free[1][:k] and stopped.stop_reason == "stop_token"
    assert stopped.stop_token == free[1][k]
    assert empty.token_ids == [] and empty.stop_reason == "max_tokens"
    assert kept.token_ids == free[2][:3] and kept.stop_reason == "max_tokens"
    # a kept state has read the prompt and the output, not the stop token
    for res, req in ((stopped, requests[2]), (empty, requests[3]), (kept, requests[4])):
        assert_states_close(res.state, prefill(model, [*req.prompt, *res.token_ids]).state, exact(model))


def test_cancel_frees_the_row_and_the_others_go_on() -> None:
    model = MockModel()
    requests = [dataclasses.replace(r, max_tokens=12) for r in mixed_requests()[1:]]
    engine = Engine(model)
    rows = [engine.add(r) for r in requests]
    engine.step()
    engine.step()
    dropped = engine.cancel(rows[1])
    assert dropped.stop_reason == "cancelled" and len(dropped.token_ids) == 2 and dropped.state is None
    model.calls.clear()
    events = engine.step()
    assert model.calls == [("step", 2, 1)]  # the row is gone from the batch
    assert rows[1] not in {e.row for e in events}
    with pytest.raises(RwkvkitError, match="no row"):
        engine.cancel(rows[1])
    results = {e.row: e.result for e in engine.run() if e.result is not None}
    for row, req in ((rows[0], requests[0]), (rows[2], requests[2])):
        assert results[row].token_ids == alone(MockModel(), req).token_ids
    # a row cancelled while its prompt waits never reaches the model
    engine = Engine(model, prefill_chunk=2)
    keep, drop = engine.add(Request(prompt=[1, 2, 3, 4])), engine.add(Request(prompt=[5, 6, 7, 8]))
    engine.step()
    assert engine.cancel(drop).prompt_tokens == 0 and engine.num_waiting == 1
    model.calls.clear()
    engine.step()
    assert ("forward", 1, 2) in model.calls and engine.num_waiting == 0 and engine.num_decoding == 1
    assert [e.row for e in engine.step()] == [keep]


def test_stop_keeps_the_state_after_every_token(model: nn.Module) -> None:
    """Engine.stop (what the text layer calls at a stop string) ends a row after the tokens it
    produced; the kept state has read all of them."""
    vocab = model.config.vocab_size
    req = Request(prompt=ids(6, 50, vocab), params=MIXED[1], max_tokens=20, seed=3, keep_state=True)
    engine = Engine(model)
    other = engine.add(dataclasses.replace(req, max_tokens=6, seed=4))  # ahead of it in the batch
    row = engine.add(req)
    for _ in range(5):
        engine.step()
    result = engine.stop(row)
    assert result.stop_reason == "stopped" and len(result.token_ids) == 5 and result.tokens == 6 + 5
    expected = prefill(model, list(req.prompt) + result.token_ids)
    assert_states_close(result.state, expected.state, exact(model))
    torch.testing.assert_close(result.logits, expected.logits, rtol=1e-4, atol=1e-4)
    assert engine.stop(other).stop_reason == "stopped"
    assert not engine.has_work and engine.step() == []


# --------------------------------------------------------------------------------------------
# Prefill


def test_prefill_chunking_equals_one_shot(model: nn.Module) -> None:
    vocab = model.config.vocab_size
    prompt = ids(45, 60, vocab)
    one_shot = prefill(model, prompt, prefill_chunk=1000)
    for chunk in (1, 7, 16):
        chunked = prefill(model, prompt, prefill_chunk=chunk)
        assert chunked.tokens == 45
        assert_states_close(chunked.state, one_shot.state, exact(model))
        torch.testing.assert_close(chunked.logits, one_shot.logits, rtol=1e-4, atol=1e-4)
        req = Request(prompt=prompt, params=MIXED[2], max_tokens=8, seed=1)
        assert (
            alone(model, req, prefill_chunk=chunk).token_ids
            == alone(model, req, prefill_chunk=1000).token_ids
        )


def test_long_prompts_are_read_in_bounded_chunks_between_decode_steps() -> None:
    model = MockModel()
    engine = Engine(model, prefill_chunk=4)
    talker = engine.add(Request(prompt=[1], max_tokens=50, seed=0))
    engine.step()
    long_row = engine.add(Request(prompt=ids(18, 70), max_tokens=3, seed=0))
    shorts = [engine.add(Request(prompt=[7], max_tokens=3, seed=s)) for s in range(3)]
    per_step, produced = [], set()
    for _ in range(7):
        model.calls.clear()
        events = engine.step()
        produced |= {e.row for e in events if e.token is not None}
        assert [e.row for e in events if e.token is not None][:1] == [talker]  # never held up
        per_step.append(sum(t for kind, _, t in model.calls if kind == "forward"))
    assert max(per_step) <= 4  # at most one chunk of prompt tokens per step
    # chunks stay at multiples of 4 in the long prompt: 4 4 4 4 2, then the short prompts (1 each)
    assert per_step[:6] == [4, 4, 4, 4, 2 + 1 + 1, 1]
    assert engine.num_waiting == 0 and {talker, long_row, *shorts} == produced


def test_a_row_can_start_from_a_prefix(model: nn.Module) -> None:
    """A prefix-cache hit: the row reads only the rest of its prompt, or nothing, and the prefix is
    never changed by the rows that start from it."""
    vocab = model.config.vocab_size
    prompt = ids(12, 80, vocab)
    prefix = prefill(model, prompt[:8])
    before = prefix.clone()
    req = Request(prompt=prompt, params=MIXED[2], max_tokens=10, seed=4)
    whole = alone(model, req)
    rest = alone(model, dataclasses.replace(req, prompt=prompt[8:], start=prefix))
    assert rest.token_ids == whole.token_ids and rest.prompt_tokens == 4 and rest.tokens == 12 + 10
    # fan out: many samples from one prefix, nothing left to read
    full = prefill(model, prompt)
    fan = [Request(params=MIXED[1], max_tokens=6, seed=s, start=full) for s in range(4)]
    together = run(model, fan)
    assert [r.token_ids for r in together] == [alone(model, r).token_ids for r in fan]
    assert together[0].prompt_tokens == 0 and len({tuple(r.token_ids) for r in together}) > 1
    assert_states_close(prefix.state, before.state, exact_match=True)
    assert torch.equal(prefix.logits, before.logits)


def test_prompt_states_are_reported_at_chunk_boundaries() -> None:
    model = MockModel()
    prompt = ids(10, 90)
    engine = Engine(model, prefill_chunk=4)
    engine.add(Request(prompt=prompt, max_tokens=1, keep_prompt_states=True))
    prefixes = [e.prefix for e in engine.run() if e.prefix is not None]
    assert [p.tokens for p in prefixes] == [4, 8, 10]
    for p in prefixes:
        expected = prefill(model, prompt[: p.tokens])
        assert torch.equal(p.state.read, expected.state.read) and torch.equal(p.logits, expected.logits)


# --------------------------------------------------------------------------------------------
# What comes back: kept states, logprobs


@pytest.mark.parametrize("how", ["max_tokens", "stop_token"])
def test_keep_state_continues_exactly(model: nn.Module, how: str) -> None:
    """The kept state equals the state from prefilling prompt + generated ids, and continuing from
    it gives what one longer run gives."""
    vocab = model.config.vocab_size
    greedy = SamplingParams(temperature=0)
    prompt = ids(9, 97, vocab)  # greedy text that does not fall into a loop at once, for every model
    whole = alone(model, Request(prompt=prompt, params=greedy, max_tokens=16)).token_ids
    if how == "stop_token":  # the first token, from the 4th on, not seen before ends it
        n = next(i for i in range(3, 16) if whole[i] not in whole[:i])
        stop = [whole[n]]
    else:
        n, stop = 8, []
    request = Request(prompt=prompt, params=greedy, max_tokens=16 if stop else n, stop_token_ids=stop)
    first = alone(model, dataclasses.replace(request, keep_state=True))
    assert first.token_ids == whole[:n]
    assert first.stop_reason == ("stop_token" if stop else "max_tokens")
    expected = prefill(model, prompt + first.token_ids)
    assert_states_close(first.state, expected.state, exact(model))
    torch.testing.assert_close(first.logits, expected.logits, rtol=1e-4, atol=1e-4)
    prefix = first.prefix()
    assert prefix.tokens == 9 + len(first.token_ids)
    rest = alone(model, Request(params=greedy, max_tokens=16 - len(first.token_ids), start=prefix))
    assert first.token_ids + rest.token_ids == whole


def test_logprobs_match_log_softmax_of_the_logits(model: nn.Module) -> None:
    vocab = model.config.vocab_size
    prompt = ids(5, 7, vocab)
    engine = Engine(model)
    engine.add(Request(prompt=prompt, params=MIXED[1], max_tokens=6, seed=2, logprobs=3))
    engine.add(Request(prompt=prompt, params=MIXED[0], max_tokens=6))  # no logprobs: none reported
    events = [e for e in engine.run() if e.token is not None]
    assert all(e.logprob is None and e.top_logprobs is None for e in events if e.row == 1)
    seen = list(prompt)
    for e in (e for e in events if e.row == 0):
        expected = torch.log_softmax(prefill(model, seen).logits[0], -1)
        assert e.logprob == pytest.approx(float(expected[e.token]), abs=1e-4)
        top = torch.topk(expected, 3)
        assert [i for i, _ in e.top_logprobs] == top.indices.tolist()
        assert [lp for _, lp in e.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
        seen.append(e.token)


# --------------------------------------------------------------------------------------------
# Fixed windows and bad input


@pytest.mark.parametrize("make", [lambda: MockModel(MockConfig(n_ctx=16)), lambda: _gpt(n_ctx=16)])
def test_a_fixed_context_model_is_never_driven_past_its_window(make: Callable[[], nn.Module]) -> None:
    model = make()
    vocab = model.config.vocab_size
    long_ask = Request(prompt=ids(10, 1, vocab), max_tokens=100, keep_state=True)
    full, at_edge = run(model, [long_ask, Request(prompt=ids(16, 2, vocab), max_tokens=5)])
    assert full.stop_reason == "context_full" and len(full.token_ids) == 6 and full.tokens == 16
    assert at_edge.stop_reason == "context_full" and at_edge.token_ids == []
    assert alone(model, dataclasses.replace(long_ask, max_tokens=6)).stop_reason == "max_tokens"
    with pytest.raises(RwkvkitError, match="context of 16"):
        Engine(model).add(Request(prompt=ids(17, 3, vocab)))
    with pytest.raises(RwkvkitError, match="context of 16"):
        Engine(model).add(Request(prompt=[1], start=full.prefix()))


def test_bad_requests_are_refused_with_a_message() -> None:
    engine = Engine(MockModel())
    for request, match in [
        (Request(prompt=[1, 40]), "outside this model's vocabulary"),
        (Request(prompt=[-1]), "outside this model's vocabulary"),
        (Request(prompt=[1], max_tokens=-1), "max_tokens"),
        (Request(prompt=[]), "empty prompt"),
        (Request(prompt=[1], logprobs=-1), "logprobs"),
        (Request(prompt=[1], start=prefill(MockModel(), [[1], [2]])), "batch size 1"),
        (Request(start=Prefix(prefill(MockModel(), [1]).state, None, 1)), "empty prompt"),
    ]:
        with pytest.raises(RwkvkitError, match=match):
            engine.add(request)
    assert not engine.has_work
    with pytest.raises(RwkvkitError, match="no row 0"):
        engine.stop(0)
    with pytest.raises(RwkvkitError, match="prefill_chunk"):
        Engine(MockModel(), prefill_chunk=0)
    with pytest.raises(RwkvkitError, match="max_batch"):
        Engine(MockModel(), max_batch=0)


# --------------------------------------------------------------------------------------------
# Token constraints (a server's JSON mode)


class EvenOnly:
    """Allows even ids only; records what the engine asked and told."""

    def __init__(self) -> None:
        self.masked = 0
        self.seen: list[int] = []

    def mask(self, logits: Tensor) -> Tensor:
        self.masked += 1
        out = logits.clone()
        out[1::2] = float("-inf")
        return out

    def advance(self, token: int) -> None:
        self.seen.append(token)


def test_a_constraint_masks_only_its_own_row() -> None:
    model = MockModel()
    greedy = SamplingParams(temperature=0)
    free = Request(prompt=ids(5, 3), params=greedy, max_tokens=10, logprobs=0)
    rule = EvenOnly()
    bound = dataclasses.replace(free, params=MIXED[1], seed=5, constraint=rule)
    together = run(model, [free, bound])
    assert together[0].token_ids == alone(model, free).token_ids
    assert any(t % 2 for t in together[0].token_ids)  # the free row does use odd ids
    assert all(t % 2 == 0 for t in together[1].token_ids) and rule.seen == together[1].token_ids
    assert rule.masked == len(together[1].token_ids) == 10
    # logprobs are the model's own, before the constraint
    engine = Engine(model)
    engine.add(dataclasses.replace(free, constraint=EvenOnly()))
    seen = list(free.prompt)
    for e in (e for e in engine.run() if e.token is not None):
        expected = torch.log_softmax(prefill(model, seen).logits[0], -1)
        assert e.token % 2 == 0 and e.logprob == pytest.approx(float(expected[e.token]), abs=1e-5)
        seen.append(e.token)


def test_prompt_logprobs_score_every_prompt_token(model: nn.Module) -> None:
    """Each prompt token under the logits before it, across chunk boundaries; the first token of a
    fresh state has no score, from a prefix it is scored by the prefix's logits."""
    vocab = model.config.vocab_size
    prompt = ids(11, 12, vocab)
    engine = Engine(model, prefill_chunk=4)
    engine.add(Request(prompt=prompt, params=MIXED[0], max_tokens=3, prompt_logprobs=2))
    events = list(engine.run())
    scored = [s for e in events if e.prompt_logprobs for s in e.prompt_logprobs]
    assert [t for t, _, _ in scored] == prompt and scored[0][1:] == (None, [])
    for i in range(1, 11):
        expected = torch.log_softmax(prefill(model, prompt[:i]).logits[0], -1)
        assert scored[i][1] == pytest.approx(float(expected[prompt[i]]), abs=1e-4)
        assert [t for t, _ in scored[i][2]] == torch.topk(expected, 2).indices.tolist()
    greedy = [e.token for e in events if e.token is not None]
    assert greedy == alone(model, Request(prompt=prompt, params=MIXED[0], max_tokens=3)).token_ids
    start = prefill(model, prompt[:5])
    engine = Engine(model)
    engine.add(Request(prompt=prompt[5:], max_tokens=0, start=start, prompt_logprobs=0))
    rest = [s for e in engine.run() if e.prompt_logprobs for s in e.prompt_logprobs]
    assert [t for t, _, _ in rest] == prompt[5:] and all(top == [] for _, _, top in rest)
    assert [lp for _, lp, _ in rest] == pytest.approx([lp for _, lp, _ in scored[5:]], abs=1e-4)
    with pytest.raises(RwkvkitError, match="prompt_logprobs"):
        engine.add(Request(prompt=[1], prompt_logprobs=-1))
