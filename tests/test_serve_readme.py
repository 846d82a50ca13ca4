"""The README's "Serving" section runs as written: its ``rwkvkit serve`` lines start servers, its
``curl`` calls and its Python snippets talk to a real server. Only the address changes (a free
port instead of 8000, which another program may hold) and the user's checkpoint is a tiny model
saved under the README's file name."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import save_tiny_model
from serve_server import REPO, ServerProcess, serve

README_URL = "http://127.0.0.1:8000"


def serving_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block in the README's "## Serving" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Serving\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def blocks(language: str, containing: str) -> list[str]:
    found = [code for lang, code in serving_blocks() if lang == language and containing in code]
    assert found, f"the README's Serving section has no {language} block with {containing!r}"
    return found


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    yield from serve()


def run(cmd: list[str], **kw) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, **kw)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def test_the_serve_command_lines_start_a_server(tmp_path: Path) -> None:
    """Each ``rwkvkit serve ...`` line, with the README's checkpoint name and a key from $KEY."""
    save_tiny_model(tmp_path / "RWKV-4-Pile-169M.pth")
    (line,) = [
        ln for ln in blocks("bash", "rwkvkit serve")[0].splitlines() if "--model" in ln
    ]  # the bundled-model line is what every other test here starts
    args = shlex.split(line.split("#")[0].replace('"$KEY"', "secret"))
    assert args[:2] == ["rwkvkit", "serve"] and "--port" in args
    args[args.index("--port") + 1] = "0"
    srv = ServerProcess(*args[2:], cwd=tmp_path)
    try:
        assert srv.api_key == "secret"
        status, _, body = srv.call("GET", "/v1/models")
        assert status == 200 and json.loads(body)["data"][0]["id"] == "RWKV-4-Pile-169M"
        status, _, _ = srv.call("GET", "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert status == 401
    finally:
        assert srv.stop() == 0


def test_the_curl_calls(server: ServerProcess) -> None:
    out = run(["bash", "-c", blocks("bash", "curl")[0].replace(README_URL, server.url)])
    completion, end = json.JSONDecoder().raw_decode(out)  # the first call's answer, then the stream
    assert completion["object"] == "text_completion" and completion["usage"]["completion_tokens"] == 40
    events = [ln for ln in out[end:].splitlines() if ln.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) > 3
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_the_openai_client_snippet(server: ServerProcess) -> None:
    code = blocks("python", "from openai import OpenAI")[0].replace(README_URL, server.url)
    out = run([sys.executable, "-c", code])
    assert "prompt tokens came from the cache" in out and "CompletionUsage(" in out


def test_the_launch_snippet() -> None:
    out = run([sys.executable, "-c", blocks("python", "ServerProcess")[0]], cwd=REPO)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+\n", out), out
