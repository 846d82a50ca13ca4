"""The server under faults: a client that goes away frees its row at once (streaming or not); a
full queue answers 429 at once; SIGTERM lets short requests finish, ends the rest with a 503 and
exits 0 with no traceback. Each wait is bounded in time."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import pytest
from serve_server import ServerProcess, serve

LONG = {"model": "rwkvkit-default", "prompt": "ROMEO:", "max_tokens": 4000, "temperature": 1.0, "seed": 3}


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    yield from serve("--max-batch", "1", "--max-queue", "0")  # room for one row: the second is refused


def long_stream(server: ServerProcess, chunks: int = 5) -> object:
    """A streaming request that would run for thousands of tokens, read for a few chunks."""
    stream = server.client().completions.create(stream=True, **LONG)
    it = iter(stream)
    for _ in range(chunks):
        next(it)
    return stream


def test_a_streaming_client_that_goes_away_frees_its_row(server: ServerProcess) -> None:
    stream = long_stream(server)
    assert server.metrics()["rwkvkit_active_rows"] == 1
    stream.close()
    assert server.wait_metric("rwkvkit_active_rows", 0, timeout=5) == 0
    settled = server.metrics()["rwkvkit_generated_tokens_total"]
    time.sleep(0.3)
    assert server.metrics()["rwkvkit_generated_tokens_total"] == settled  # nothing runs for it any more
    assert server.metrics()["rwkvkit_queue_depth"] == 0


def test_a_waiting_client_that_goes_away_frees_its_row(server: ServerProcess) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(LONG).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert server.wait_metric("rwkvkit_active_rows", 1, timeout=10) == 1
    assert server.wait_metric("rwkvkit_active_rows", 0, timeout=5) == 0


def test_a_full_queue_answers_429_at_once(server: ServerProcess) -> None:
    import openai

    stream = long_stream(server)
    try:
        start = time.monotonic()
        status, headers, body = server.call("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert time.monotonic() - start < 2
        assert status == 429 and headers.get("retry-after", headers.get("Retry-After")) == "1"
        assert json.loads(body)["error"]["code"] == "queue_full"
        with pytest.raises(openai.RateLimitError, match="busy"):
            server.client().chat.completions.create(
                model="rwkvkit-default", messages=[{"role": "user", "content": "x"}]
            )
    finally:
        stream.close()
    assert server.wait_metric("rwkvkit_active_rows", 0, timeout=5) == 0
    out = server.client().completions.create(model="rwkvkit-default", prompt="Hi", max_tokens=2)
    assert out.usage.completion_tokens == 2  # served again once the row is free


def test_sigterm_drains_short_requests_ends_long_ones_and_exits_cleanly() -> None:
    import openai

    server = ServerProcess("--shutdown-timeout", "3")
    outcome: dict[str, object] = {}

    def run_long() -> None:
        try:
            for _ in server.client().completions.create(stream=True, **LONG):
                pass
            outcome["long"] = "finished"
        except openai.APIError as e:
            outcome["long"] = str(e)

    def run_short() -> None:
        out = server.client().completions.create(model="rwkvkit-default", prompt="Hi", max_tokens=150)
        outcome["short"] = (out.choices[0].finish_reason, out.usage.completion_tokens)

    threads = [threading.Thread(target=run_long), threading.Thread(target=run_short)]
    for t in threads:
        t.start()
    assert server.wait_metric("rwkvkit_active_rows", 2, timeout=20) == 2
    start = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - start < 3 + 10
    for t in threads:
        t.join(30)
    log = "".join(server.log)
    assert "Traceback" not in log, log
    assert outcome["short"] == ("length", 150)  # drained: it finished within the grace period
    assert "shutting down" in str(outcome["long"])  # cut at the deadline, with a 503 error event
