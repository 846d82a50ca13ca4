"""The scheduler in this process (no HTTP): model variants with their own start state and their
own cache namespace (what state-tuned models plug into), n choices reading one prompt once, and
the state a chat reply leaves kept under the ids the next turn sends."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

import rwkvkit
from rwkvkit.chat import ChatTemplate
from rwkvkit.engine import Request, prefill
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.sampling import SamplingParams, make_generator
from rwkvkit.serve.chatformat import encode_chat, reply_ids
from rwkvkit.serve.metrics import Metrics
from rwkvkit.serve.registry import Registry, Variant
from rwkvkit.serve.scheduler import Admitted, Finished, Job, Piece, Scheduler, Sink
from rwkvkit.testing import random_rwkv4
from rwkvkit.tokenizer import ByteTokenizer, load_tokenizer

TOK = ByteTokenizer()
GREEDY = SamplingParams(temperature=0)


@pytest.fixture
def setup():
    model = random_rwkv4(RWKV4Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=64), 9)
    registry = Registry(model, TOK, "base")
    tuned = registry.add(
        Variant("tuned", model, kind="state", start=prefill(model, TOK.encode("Once upon a time")))
    )
    scheduler = Scheduler(registry, Metrics(), max_batch=4, max_queue=8, prefill_chunk=8, cache_bytes=2**24)
    scheduler.start()
    yield model, registry, tuned, scheduler
    scheduler.close()


def run(scheduler: Scheduler, leaders: list[Job]) -> dict[int, tuple[str, int, str]]:
    """Choice index -> (text, cached tokens of its prompt, finish reason)."""

    async def go() -> dict[int, tuple[str, int, str]]:
        sink = Sink(asyncio.get_running_loop())
        n = 0
        for lead in leaders:
            for job in (lead, *lead.followers):
                job.sink = sink
                n += 1
        scheduler.submit(leaders)
        texts: dict[int, list[str]] = {}
        cached, done = {}, {}
        while len(done) < n:
            item = await asyncio.wait_for(sink.queue.get(), 30)
            if isinstance(item, Admitted):
                cached[item.index] = item.cached
            elif isinstance(item, Piece | Finished):
                texts.setdefault(item.index, []).append(item.text)
                if isinstance(item, Finished):
                    done[item.index] = item.reason
        return {i: ("".join(texts[i]), cached.get(i, -1), done[i]) for i in done}

    return asyncio.run(go())


def job(
    variant: Variant, text: str, index: int = 0, seed: int | None = None, chat: bool = False, **kw
) -> Job:
    params = kw.pop("params", GREEDY)
    request = Request(params=params, max_tokens=kw.pop("max_tokens", 12), generator=make_generator(seed))
    ids = TOK.encode(text) if isinstance(text, str) else text
    return Job(index, variant, ids, request, kw.pop("stop", []), chat=chat)


def test_a_state_variant_starts_from_its_own_state_and_cache(setup) -> None:
    model, registry, tuned, scheduler = setup
    expected = rwkvkit.generate_text(model, TOK, " and", max_tokens=12, temperature=0, state=tuned.start).text
    assert run(scheduler, [job(tuned, " and")])[0] == (expected, 0, "length")
    base = rwkvkit.generate_text(model, TOK, " and", max_tokens=12, temperature=0).text
    assert base != expected
    assert run(scheduler, [job(registry.base, " and")])[0] == (base, 0, "length")  # no hit across variants
    assert run(scheduler, [job(tuned, " and")])[0] == (expected, 4, "length")  # a hit in its own
    assert [v["id"] for v in registry.listing()["data"]] == ["base", "tuned"]


def test_n_choices_read_the_prompt_once(setup) -> None:
    model, registry, _, scheduler = setup
    sampled = SamplingParams(temperature=1.0)
    prompt = "The quick brown fox jumps over"
    lead = job(registry.base, prompt, 0, seed=5, params=sampled)
    lead.followers = [job(registry.base, prompt, i, seed=5 + i, params=sampled) for i in (1, 2)]
    before = scheduler.cache.stats.misses
    together = run(scheduler, [lead])
    assert scheduler.cache.stats.misses == before + 1  # one lookup, one prefill, for three rows
    for i in range(3):
        alone = rwkvkit.generate_text(model, TOK, prompt, max_tokens=12, temperature=1.0, seed=5 + i).text
        assert together[i][0] == alone
    assert together[1][1] == len(prompt)  # the followers skipped the whole prompt


@pytest.fixture(params=["byte", "world"])
def chat_setup(request: pytest.FixtureRequest):
    """A random model and a scheduler for each tokenizer: the World tokenizer merges bytes, so a
    reply's own ids may differ from those of its text sent back."""
    tok = load_tokenizer(request.param)
    model = random_rwkv4(RWKV4Config(vocab_size=tok.vocab_size, n_layer=2, n_embd=32, ffn_dim=64), 4)
    registry = Registry(model, tok, "base")
    scheduler = Scheduler(registry, Metrics(), max_batch=4, max_queue=8, prefill_chunk=8, cache_bytes=2**26)
    scheduler.start()
    yield model, registry, scheduler, tok
    scheduler.close()


def test_a_chat_reply_is_cached_under_the_ids_the_next_turn_sends(chat_setup) -> None:
    model, registry, scheduler, tok = chat_setup
    template = ChatTemplate()
    messages = [{"role": "user", "content": "Hello there"}]
    ids = encode_chat(tok, template, messages)
    request = Request(params=GREEDY, max_tokens=20, stop_token_ids=[0], generator=make_generator(None))
    lead = Job(0, registry.base, ids, request, [template.turn_end], chat=True)
    text, _, _ = run(scheduler, [lead])[0]
    follow = [*messages, {"role": "assistant", "content": text}, {"role": "user", "content": "More"}]
    key = ids + reply_ids(tok, template, text)
    assert encode_chat(tok, template, follow)[: len(key)] == key
    for _ in range(500):  # the reply's own ids may differ from those sent back: then they are read after it
        if not any(e.has_work for e in scheduler.engines.values()):
            break
        asyncio.run(asyncio.sleep(0.01))
    n, prefix = scheduler.cache.lookup(encode_chat(tok, template, follow), "base")  # the thread is idle now
    assert n == len(key)
    expected = prefill(model, key)
    for name, t in prefix.state.tensors().items():
        assert (t - expected.state.tensors()[name]).abs().max() < 1e-4, name
    assert dataclasses.asdict(registry.template) == dataclasses.asdict(template)


def test_cancelling_a_request_frees_every_choice(setup) -> None:
    _, registry, _, scheduler = setup
    prompt = "A long tale begins"

    async def go() -> None:
        sink = Sink(asyncio.get_running_loop())
        lead = job(registry.base, prompt, 0, max_tokens=100_000)
        lead.followers = [job(registry.base, prompt, i, max_tokens=100_000) for i in (1, 2)]
        for j in (lead, *lead.followers):
            j.sink = sink
        scheduler.submit([lead])
        started: set[int] = set()
        while len(started) < 3:  # every choice is decoding
            item = await asyncio.wait_for(sink.queue.get(), 30)
            if isinstance(item, Piece):
                started.add(item.index)
        assert scheduler.rows == 3
        scheduler.cancel([lead])
        for _ in range(500):
            if scheduler.rows == 0 and scheduler.decoding == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{scheduler.rows} rows still held after the cancel")

    asyncio.run(go())
    assert not any(e.has_work for e in scheduler.engines.values())
