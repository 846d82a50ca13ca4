"""The server through the real ``openai`` client, against ``rwkvkit serve`` on the bundled model in
a subprocess (one server for the module): OpenAI's shapes, greedy output equal to
``rwkvkit generate``, streams equal to whole responses, stop strings, seeds, concurrency, n,
logprobs, echo, JSON mode, the prefix cache and the metrics."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from serve_server import ServerProcess, serve

import rwkvkit
from rwkvkit.chat import ChatTemplate
from rwkvkit.cli import main
from rwkvkit.defaults import DEFAULT_MODEL
from rwkvkit.engine import prefill
from rwkvkit.serve.chatformat import encode_chat
from rwkvkit.serve.jsonmode import JsonPrefix
from rwkvkit.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
PROMPTS = ["ROMEO:", "First Citizen:\nWe are", "KING HENRY:\nO", "To be, or not", "JULIET:\nAy me", "Enter"]


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    yield from serve()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return rwkvkit.load_model(DEFAULT_MODEL)


def complete(server: ServerProcess, prompt: str | list, **kw) -> object:
    kw.setdefault("max_tokens", 24)
    return server.client().completions.create(model="rwkvkit-default", prompt=prompt, **kw)


def chat(server: ServerProcess, messages: list[dict], **kw) -> object:
    kw.setdefault("max_tokens", 24)
    return server.client().chat.completions.create(model="rwkvkit-default", messages=messages, **kw)


def stream_text(stream: object, chat_route: bool) -> tuple[str, str | None, object]:
    """(text, finish_reason, usage) from a stream of chunks."""
    text, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            piece = c.delta.content if chat_route else c.text
            text.append(piece or "")
            finish = c.finish_reason or finish
    return "".join(text), finish, usage


# --------------------------------------------------------------------------------------------


def test_models_health_and_the_shapes(server: ServerProcess) -> None:
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["rwkvkit-default"] and models.data[0].object == "model"
    status, _, body = server.call("GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    out = complete(server, "ROMEO:", temperature=0)
    assert out.object == "text_completion" and out.id.startswith("cmpl-") and out.model == "rwkvkit-default"
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 24
    assert out.usage.prompt_tokens == 6 and out.usage.total_tokens == 30
    reply = chat(server, [{"role": "user", "content": "Hello"}], temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens == len(
        encode_chat(TOK, ChatTemplate(), [{"role": "user", "content": "Hello"}])
    )


def test_greedy_completion_equals_rwkvkit_generate(
    server: ServerProcess, model: torch.nn.Module, capsys: pytest.CaptureFixture[str]
) -> None:
    """What ``rwkvkit generate --temperature 0`` prints (its main, in this process: the same code as
    the command, without starting torch a third time)."""
    prompt = "First Citizen:\nWe are"
    assert (
        main(["generate", "--prompt", prompt, "--max-tokens", "60", "--temperature", "0", "--stop", "\\n\\n"])
        == 0
    )
    printed = capsys.readouterr().out
    out = complete(server, prompt, max_tokens=60, temperature=0, stop="\n\n")
    text = out.choices[0].text  # the command ends what it prints with a newline, the API returns the text
    assert printed == (text if text.endswith("\n") else text + "\n") and text
    out = complete(server, "ROMEO:", max_tokens=60, temperature=0)
    assert (
        out.choices[0].text == rwkvkit.generate_text(model, TOK, "ROMEO:", max_tokens=60, temperature=0).text
    )


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "top_p": 0.9, "seed": 11}])
def test_a_stream_concatenates_to_the_whole_response(server: ServerProcess, sampling: dict) -> None:
    whole = complete(server, "KING HENRY:\nO", max_tokens=40, **sampling)
    text, finish, usage = stream_text(
        complete(
            server,
            "KING HENRY:\nO",
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
            **sampling,
        ),
        chat_route=False,
    )
    assert (text, finish) == (whole.choices[0].text, whole.choices[0].finish_reason)
    assert usage.completion_tokens == whole.usage.completion_tokens == 40
    messages = [{"role": "user", "content": "Speak, my lord."}]
    whole = chat(server, messages, max_tokens=40, **sampling)
    text, finish, usage = stream_text(
        chat(
            server, messages, max_tokens=40, stream=True, stream_options={"include_usage": True}, **sampling
        ),
        chat_route=True,
    )
    assert (text, finish) == (whole.choices[0].message.content, whole.choices[0].finish_reason)
    assert usage.prompt_tokens == whole.usage.prompt_tokens and usage.total_tokens == whole.usage.total_tokens


def test_stop_strings_end_the_text_and_are_never_sent(server: ServerProcess) -> None:
    free = complete(server, "ROMEO:", max_tokens=60, temperature=0).choices[0].text
    stop = free[12:15]
    assert stop and stop in free
    cut = complete(server, "ROMEO:", max_tokens=60, temperature=0, stop=[stop, "qqqq"])
    assert cut.choices[0].text == free[: free.index(stop)] and cut.choices[0].finish_reason == "stop"
    text, finish, _ = stream_text(
        complete(server, "ROMEO:", max_tokens=60, temperature=0, stop=stop, stream=True), chat_route=False
    )
    assert (text, finish) == (cut.choices[0].text, "stop")


def test_parallel_greedy_requests_equal_each_alone(server: ServerProcess) -> None:
    def one(prompt: str) -> str:
        return complete(server, prompt, max_tokens=30, temperature=0).choices[0].text

    alone = [one(p) for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(one, PROMPTS))
    assert together == alone and len(set(alone)) == len(PROMPTS)


def test_a_seeded_request_is_reproducible_whatever_else_runs(server: ServerProcess) -> None:
    def seeded(seed: int) -> str:
        return complete(server, "To be, or not", max_tokens=30, temperature=1.0, seed=seed).choices[0].text

    alone = seeded(7)
    with ThreadPoolExecutor(5) as pool:
        noise = [pool.submit(complete, server, p, max_tokens=30, temperature=1.2) for p in PROMPTS[:4]]
        busy = pool.submit(seeded, 7)
        assert busy.result() == alone
        [f.result() for f in noise]
    assert seeded(8) != alone


def test_n_choices_each_equal_their_seed_alone(server: ServerProcess) -> None:
    out = complete(server, "JULIET:\nAy me", n=3, max_tokens=20, temperature=1.0, seed=40)
    assert [c.index for c in out.choices] == [0, 1, 2]
    for j, c in enumerate(out.choices):
        alone = complete(server, "JULIET:\nAy me", max_tokens=20, temperature=1.0, seed=40 + j)
        assert c.text == alone.choices[0].text
    assert out.usage.prompt_tokens == len("JULIET:\nAy me") and out.usage.completion_tokens == 60
    two = complete(server, ["ROMEO:", "Enter"], max_tokens=10, temperature=0)
    one = [complete(server, p, max_tokens=10, temperature=0).choices[0].text for p in ("ROMEO:", "Enter")]
    assert [c.text for c in two.choices] == one
    as_ids = complete(server, [ord(c) for c in "Enter"], max_tokens=10, temperature=0)
    assert as_ids.choices[0].text == one[1]


def test_logprobs_are_the_models_own(server: ServerProcess, model: torch.nn.Module) -> None:
    out = complete(server, "ROMEO:", max_tokens=8, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert "".join(lp.tokens) == out.choices[0].text and len(lp.token_logprobs) == 8
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    ids = TOK.encode("ROMEO:")
    for i, tok in enumerate(lp.tokens):
        expected = torch.log_softmax(prefill(model, ids).logits[0], -1)
        top = torch.topk(expected, 3)
        assert lp.token_logprobs[i] == pytest.approx(float(expected[ord(tok)]), abs=1e-3)
        assert [ord(t) for t in lp.top_logprobs[i]] == top.indices.tolist()  # greedy: the best first
        ids.append(ord(tok))
    reply = chat(
        server,
        [{"role": "user", "content": "Hi"}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == 6 and all(
        len(e.top_logprobs) == 2 and e.bytes == list(e.token.encode()) for e in content
    )
    assert "".join(e.token for e in content).lstrip(" ") == reply.choices[0].message.content


def test_echo_puts_the_prompt_first(server: ServerProcess) -> None:
    out = complete(server, "ROMEO:", max_tokens=10, temperature=0, echo=True)
    plain = complete(server, "ROMEO:", max_tokens=10, temperature=0)
    assert out.choices[0].text == "ROMEO:" + plain.choices[0].text
    text, _, _ = stream_text(
        complete(server, "ROMEO:", max_tokens=10, temperature=0, echo=True, stream=True), False
    )
    assert text == out.choices[0].text


def test_echo_with_logprobs_scores_the_prompt(server: ServerProcess, model: torch.nn.Module) -> None:
    """What scoring text through the API uses (lm-eval's completions models): max_tokens 0, echo,
    logprobs. Every prompt token's logprob is the model's; the first has none."""
    prompt = "ROMEO: But soft"
    out = complete(server, prompt, max_tokens=0, echo=True, logprobs=2, n=2)
    ids = TOK.encode(prompt)
    with torch.no_grad():  # (T, V): position i scores id i + 1
        full = model(torch.tensor([ids]))[0][0].float().log_softmax(-1)
    for c in out.choices:
        lp = c.logprobs
        assert c.text == prompt and "".join(lp.tokens) == prompt and lp.text_offset[:3] == [0, 1, 2]
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        expected = [float(full[i, t]) for i, t in enumerate(ids[1:])]
        assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-3)
        assert all(len(top) == 2 for top in lp.top_logprobs[1:])
    more = complete(server, prompt, max_tokens=5, temperature=0, echo=True, logprobs=1)
    assert (
        more.choices[0].text == prompt + complete(server, prompt, max_tokens=5, temperature=0).choices[0].text
    )
    assert len(more.choices[0].logprobs.tokens) == len(ids) + 5
    chunks = list(complete(server, prompt, max_tokens=5, temperature=0, echo=True, logprobs=1, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == more.choices[0].text
    streamed = [x for c in chunks if c.choices[0].logprobs for x in c.choices[0].logprobs.token_logprobs]
    assert streamed == more.choices[0].logprobs.token_logprobs


def test_json_mode_gives_a_json_object(server: ServerProcess) -> None:
    """The bundled model writes Shakespeare, not JSON: left alone it fills a long string, but every
    prefix it writes is JSON's; pushed towards quotes and braces, it closes the object and stops."""
    ask = [{"role": "user", "content": "Give me a JSON object."}]
    fmt = {"type": "json_object"}
    for seed in range(3):
        reply = chat(server, ask, max_tokens=60, temperature=0.7, seed=seed, response_format=fmt)
        content = reply.choices[0].message.content
        assert content.startswith("{") and JsonPrefix().feed(content.encode()), content
        closed = chat(
            server,
            ask,
            max_tokens=200,
            temperature=0.7,
            seed=seed,
            response_format=fmt,
            logit_bias={"34": 20, "125": 20, "44": -100},
        )
        content = closed.choices[0].message.content
        assert isinstance(json.loads(content), dict) and closed.choices[0].finish_reason == "stop", content


def ttft(server: ServerProcess, messages: list[dict]) -> tuple[float, int]:
    """(seconds to the first content chunk, cached prompt tokens)."""
    start, first, usage = time.perf_counter(), None, None
    stream = chat(
        server, messages, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        usage = chunk.usage or usage
    assert first is not None and usage is not None
    return first, usage.prompt_tokens_details.cached_tokens


def test_the_next_chat_turn_starts_from_the_cached_state(server: ServerProcess) -> None:
    history = "Now is the winter of our discontent made glorious summer. " * 50  # ~3000 tokens
    messages = [{"role": "system", "content": history}, {"role": "user", "content": "Who speaks?"}]
    first = chat(server, messages, max_tokens=30, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    answer = first.choices[0].message.content
    turn2 = [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
    second = chat(server, turn2, max_tokens=30, temperature=0)
    # the cache held the state after turn 1's prompt, its reply and the turn's end
    expected = len(encode_chat(TOK, ChatTemplate(), turn2[:3])) - len(TOK.encode("Assistant:"))
    assert second.usage.prompt_tokens_details.cached_tokens == expected
    assert second.usage.prompt_tokens - expected == len(TOK.encode("User: And then?\n\nAssistant:"))
    # a warm turn's first token comes sooner than the same-length conversation sent cold
    warm, cold = [], []
    for i in range(3):
        turn = [*turn2, {"role": "assistant", "content": "Ay."}, {"role": "user", "content": f"Again {i}?"}]
        t, cached = ttft(server, turn)
        warm.append(t)
        assert cached > len(history)
        fresh = [{"role": "system", "content": f"{i}" + history[1:]}, *turn[1:]]  # same length, never seen
        t, cached = ttft(server, fresh)
        cold.append(t)
        assert cached == 0
    assert min(warm) < min(cold) / 2, (warm, cold)


def test_metrics_count_requests_tokens_and_the_cache(server: ServerProcess) -> None:
    before = server.metrics()
    complete(server, "Exeunt all but Hamlet", max_tokens=5, temperature=0)
    complete(server, "Exeunt all but Hamlet", max_tokens=5, temperature=0)  # a whole-prompt cache hit
    after = server.metrics()
    key = 'rwkvkit_requests_total{route="/v1/completions",status="200"}'
    assert after[key] - before.get(key, 0) == 2
    assert after["rwkvkit_generated_tokens_total"] - before["rwkvkit_generated_tokens_total"] == 10
    assert after["rwkvkit_prompt_tokens_total"] - before["rwkvkit_prompt_tokens_total"] == 42
    assert after["rwkvkit_cached_prompt_tokens_total"] - before["rwkvkit_cached_prompt_tokens_total"] == 21
    assert after["rwkvkit_prefix_cache_hits_total"] > before["rwkvkit_prefix_cache_hits_total"]
    assert 0 < after["rwkvkit_prefix_cache_bytes"] <= after["rwkvkit_prefix_cache_capacity_bytes"]
    assert after["rwkvkit_active_rows"] == 0 and after["rwkvkit_queue_depth"] == 0
    assert after["rwkvkit_generated_tokens_per_second"] > 0
