"""``rwkvkit serve`` as a command: bad flags and a busy port fail in one line (exit 2, no
traceback, before any model is loaded where they can); a chat template from a file and a model
of your own are served as asked."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from cli_run import rwkvkit_cli, save_tiny_model
from serve_server import ServerProcess

import rwkvkit
from rwkvkit.chat import ChatTemplate
from rwkvkit.cli import main
from rwkvkit.tokenizer import ByteTokenizer


def one_line_error(code: int, stderr: str, words: str) -> None:
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rwkvkit serve: error:") and words in lines[0], stderr
    assert "Traceback" not in stderr


def serve_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``rwkvkit serve ARGS`` in this process (each failure comes before anything is served)."""
    try:
        code = main(["serve", *args])
    except SystemExit as e:  # argparse's usage errors
        code = int(e.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "70000"], "not a port"),
        (["--port", "http"], "not an integer"),
        (["--max-batch", "0"], "below 1"),
        (["--max-queue", "-1"], "below 0"),
        (["--state-cache-mb", "-5"], "below 0"),
        (["--max-prompt-tokens", "many"], "not an integer"),
        (["--shutdown-timeout", "soon"], "not a number"),
        (["--quantize", "int3"], "invalid choice"),
        (["--threads", "0"], "at least 1"),
        (["--model", "/nonexistent/model.pth", "--port", "0"], "/nonexistent/model.pth"),
    ],
)
def test_bad_flags_fail_in_one_line(capsys: pytest.CaptureFixture[str], args: list[str], words: str) -> None:
    one_line_error(*serve_main(capsys, *args), words)


def test_bad_chat_templates_fail_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    for content, words in [
        ("{", "--chat-template"),
        ("{", "not valid JSON"),
        ('{"user": ""}', "non-empty string"),
        ('{"usr": "Q"}', "fields among"),
    ]:
        bad.write_text(content)
        one_line_error(*serve_main(capsys, "--chat-template", str(bad)), words)
    one_line_error(*serve_main(capsys, "--chat-template", str(tmp_path / "none.json")), "none.json")


def test_a_busy_port_fails_in_one_line() -> None:
    """In a real process: the one line, exit 2, no traceback, before the model is loaded."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = rwkvkit_cli("serve", "--port", str(port), check=False)
        one_line_error(proc.returncode, proc.stderr, "cannot listen")


def test_a_model_and_chat_template_of_your_own(tmp_path: Path) -> None:
    """A random byte model with a Q/A template and no cache: the chat reply is what generate gives
    for the rendered prompt, up to the template's turn end."""
    pytest.importorskip("openai", reason="the server's tests use the openai client")
    path = save_tiny_model(tmp_path / "tiny.pth")
    template = {"user": "Q", "assistant": "A", "system": "Note", "turn_end": "\n"}
    (tmp_path / "qa.json").write_text(json.dumps(template))
    server = ServerProcess(
        "--model", str(path), "--chat-template", str(tmp_path / "qa.json"), "--state-cache-mb", "0"
    )
    try:
        client = server.client()
        assert [m.id for m in client.models.list().data] == ["tiny"]
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
        reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=30, temperature=0)
        prompt = ChatTemplate(**template).render(messages)
        assert prompt == "Note: Be brief.\nQ: Hi there\nA:"
        assert (
            reply.usage.prompt_tokens == len(prompt) and reply.usage.prompt_tokens_details.cached_tokens == 0
        )
        model = rwkvkit.load_model(path)
        expected = rwkvkit.generate_text(
            model, ByteTokenizer(), prompt, max_tokens=30, temperature=0, stop=["\n"]
        )
        assert reply.choices[0].message.content == expected.text.lstrip(" ")
        again = client.chat.completions.create(model="tiny", messages=messages, max_tokens=30, temperature=0)
        assert again.usage.prompt_tokens_details.cached_tokens == 0  # the cache is off
    finally:
        assert server.stop() == 0
