"""The server's bad-input table: every bad request gets OpenAI's error JSON
(``{"error": {"message", "type", "param", "code"}}``) with the right status, at once, and the server
keeps serving. One server (bundled model, an API key, small limits) for the whole table."""

from __future__ import annotations

import json
import time

import pytest
from serve_server import ServerProcess, serve

KEY = "test-key-123"
MAX_PROMPT = 64
C, CHAT = "/v1/completions", "/v1/chat/completions"
OK = {"prompt": "ROMEO:", "max_tokens": 2}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    yield from serve("--api-key", KEY, "--max-prompt-tokens", str(MAX_PROMPT), "--max-tokens-limit", "100")


def c(**fields) -> dict:
    return {**OK, **fields}


def ch(**fields) -> dict:
    return {"messages": HI, "max_tokens": 2, **fields}


# (what, path, body, status, the field named as param (None: any), words the message must hold)
TABLE = [
    ("malformed JSON", C, '{"prompt": "x",', 400, None, "not valid JSON"),
    ("JSON that is not an object", C, "[1, 2]", 400, None, "JSON object"),
    ("NaN is not JSON", C, '{"prompt": "x", "temperature": NaN}', 400, None, "not valid JSON"),
    ("empty body", C, "", 400, None, "not valid JSON"),
    ("negative max_tokens", C, c(max_tokens=-1), 400, "max_tokens", "[0, 100]"),
    ("max_tokens over the limit", C, c(max_tokens=101), 400, "max_tokens", "100"),
    ("max_tokens as a string", C, c(max_tokens="10"), 400, "max_tokens", "integer"),
    ("max_tokens as a boolean", C, c(max_tokens=True), 400, "max_tokens", "integer"),
    ("chat max_tokens 0", CHAT, ch(max_tokens=0), 400, "max_tokens", "[1, 100]"),
    ("temperature below 0", C, c(temperature=-0.5), 400, "temperature", "[0, 2]"),
    ("temperature above 2", C, c(temperature=2.5), 400, "temperature", "[0, 2]"),
    ("temperature as text", C, c(temperature="hot"), 400, "temperature", "number"),
    ("top_p 0", C, c(top_p=0), 400, "top_p", "(0, 1]"),
    ("top_p above 1", C, c(top_p=1.5), 400, "top_p", "(0, 1]"),
    ("top_k below -1", C, c(top_k=-2), 400, "top_k", ">= -1"),
    ("min_p above 1", C, c(min_p=2), 400, "min_p", "[0, 1]"),
    ("presence_penalty above 2", CHAT, ch(presence_penalty=3), 400, "presence_penalty", "[-2, 2]"),
    ("frequency_penalty a list", C, c(frequency_penalty=[1]), 400, "frequency_penalty", "number"),
    ("n 0", C, c(n=0), 400, "n", "[1, 16]"),
    ("n 100", C, c(n=100), 400, "n", "[1, 16]"),
    ("seed a fraction", C, c(seed=1.5), 400, "seed", "integer"),
    ("seed past 64 bits", C, c(seed=2**70), 400, "seed", "range"),
    ("stop a number", C, c(stop=5), 400, "stop", "string"),
    ("stop an empty string", C, c(stop=[""]), 400, "stop", "1 to"),
    ("stop 17 strings", C, c(stop=[str(i) for i in range(17)]), 400, "stop", "at most 16"),
    ("logprobs 50", C, c(logprobs=50), 400, "logprobs", "[0, 20]"),
    ("top_logprobs without logprobs", CHAT, ch(top_logprobs=2), 400, "top_logprobs", "logprobs: true"),
    ("logit_bias key not an id", C, c(logit_bias={"abc": 1}), 400, "logit_bias", "token ids"),
    ("logit_bias id outside the vocabulary", C, c(logit_bias={"999999": 1}), 400, "logit_bias", "vocabulary"),
    ("logit_bias value over 100", C, c(logit_bias={"5": 200}), 400, "logit_bias", "[-100, 100]"),
    ("stream not a boolean", C, c(stream="yes"), 400, "stream", "true or false"),
    ("prompt missing", C, {"max_tokens": 2}, 400, "prompt", "required"),
    ("prompt an object", C, c(prompt={}), 400, "prompt", "must be a string"),
    ("prompt an empty list", C, c(prompt=[]), 400, "prompt", "must be a string"),
    ("prompt an empty string", C, c(prompt=""), 400, "prompt", "empty"),
    ("prompt id below 0", C, c(prompt=[-1]), 400, "prompt", "outside the vocabulary"),
    ("prompt id past the vocabulary", C, c(prompt=[300]), 400, "prompt", "outside the vocabulary"),
    (
        "prompt over --max-prompt-tokens",
        C,
        c(prompt="x" * (MAX_PROMPT + 1)),
        400,
        "prompt",
        "--max-prompt-tokens",
    ),
    (
        "chat over --max-prompt-tokens",
        CHAT,
        ch(messages=[{"role": "user", "content": "x" * 80}]),
        400,
        "messages",
        "limit",
    ),
    ("too many prompts", C, c(prompt=["a"] * 10, n=10), 400, "prompt", "choices per request"),
    ("messages missing", CHAT, {"max_tokens": 2}, 400, "messages", "non-empty array"),
    ("messages empty", CHAT, ch(messages=[]), 400, "messages", "non-empty array"),
    ("a message not an object", CHAT, ch(messages=["hi"]), 400, "messages[0]", "object"),
    ("an unknown role", CHAT, ch(messages=[{"role": "robot", "content": "x"}]), 400, "messages[0]", "role"),
    ("content a number", CHAT, ch(messages=[{"role": "user", "content": 5}]), 400, "messages[0]", "string"),
    (
        "an image part",
        CHAT,
        ch(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        "messages[0]",
        "text parts",
    ),
    (
        "response_format json_schema",
        CHAT,
        ch(response_format={"type": "json_schema"}),
        400,
        "response_format",
        "json_object",
    ),
    ("suffix", C, c(suffix="x"), 400, "suffix", "not supported"),
    (
        "tools",
        CHAT,
        ch(tools=[{"type": "function", "function": {"name": "f"}}]),
        400,
        "tools",
        "not supported",
    ),
    ("best_of other than n", C, c(best_of=3), 400, "best_of", "not supported"),
    ("an unknown model", C, c(model="gpt-4"), 404, "model", "does not exist"),
    ("an unknown model, chat", CHAT, ch(model="nope"), 404, "model", "/v1/models"),
]


def check_error(
    status: int, headers: dict, body: bytes, want_status: int, param: str | None, words: str
) -> dict:
    assert status == want_status, body
    assert headers.get("content-type", headers.get("Content-Type", "")).startswith("application/json")
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    ("what", "path", "body", "status", "param", "words"), TABLE, ids=[row[0] for row in TABLE]
)
def test_a_bad_request_gets_openais_error(
    server: ServerProcess, what: str, path: str, body: object, status: int, param: str | None, words: str
) -> None:
    start = time.monotonic()
    check_error(*server.call("POST", path, body), status, param, words)
    assert time.monotonic() - start < 10  # at once, not after generating


def test_codes_and_the_server_keeps_serving(server: ServerProcess) -> None:
    error = check_error(*server.call("POST", C, c(prompt="x" * 80)), 400, "prompt", "limit")
    assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
    assert check_error(*server.call("POST", C, c(model="x")), 404, "model", "x")["code"] == "model_not_found"
    status, _, body = server.call(
        "POST", C, c(frobnicate=1, metadata={"a": 1}, user="u1")
    )  # unknown fields: ignored
    assert status == 200 and json.loads(body)["choices"][0]["finish_reason"] == "length"
    status, _, body = server.call("POST", CHAT, ch(stream=False))
    assert status == 200 and json.loads(body)["object"] == "chat.completion"


def test_the_api_key(server: ServerProcess) -> None:
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEY}"},
    ):
        error = check_error(*server.call("POST", C, OK, headers), 401, None, "API key")
        assert error["code"] == "invalid_api_key"
    check_error(*server.call("GET", "/v1/models", None, {"Authorization": ""}), 401, None, "API key")
    status, _, _ = server.call("GET", "/v1/models")
    assert status == 200
    for open_path in ("/", "/health", "/metrics"):  # the page, the probe and the scrape need no key
        assert server.call("GET", open_path, None, {"Authorization": ""})[0] == 200


def test_the_openai_client_sees_the_right_exceptions(server: ServerProcess) -> None:
    import openai

    client = server.client()
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="rwkvkit-default", prompt="x", temperature=-1)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=HI)
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    assert (
        client.completions.create(model="rwkvkit-default", prompt="x", max_tokens=1).usage.completion_tokens
        == 1
    )


def test_routes_methods_and_sizes(server: ServerProcess) -> None:
    check_error(*server.call("GET", "/v1/nothing"), 404, None, "no such route")
    check_error(*server.call("GET", C), 405, None, "Method Not Allowed")
    check_error(*server.call("GET", "/v1/models/nope"), 404, "model", "does not exist")
    huge = json.dumps({"prompt": "x" * 200_000}).encode()  # over 64 KiB + 32 bytes x 64 tokens
    check_error(*server.call("POST", C, huge), 413, None, "bytes")
    status, _, body = server.call("GET", "/v1/models/rwkvkit-default")
    assert status == 200 and json.loads(body)["id"] == "rwkvkit-default"
