"""``rwkvkit generate`` and ``rwkvkit chat`` run as a user runs them: in a subprocess, on a small
random byte-level model saved to disk, compared with the Python API on the same weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rwkvkit
from rwkvkit.chat import Chat
from rwkvkit.defaults import default_model_path
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.testing import random_rwkv4_state_dict

REPO = Path(__file__).resolve().parents[1]
CONFIG = RWKV4Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=64)


def rwkvkit_cli(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [sys.executable, "-m", "rwkvkit", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=REPO,
        env=env,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    torch.save(random_rwkv4_state_dict(CONFIG, seed=23), path)
    return path


@pytest.fixture(scope="module")
def loaded(model_path: Path):
    return rwkvkit.load_model(model_path), rwkvkit.load_tokenizer("byte")


def test_generate_streams_only_the_continuation(model_path: Path, loaded) -> None:
    model, tok = loaded
    expected = rwkvkit.generate_text(model, tok, "To be, or", temperature=0, max_tokens=24)
    proc = rwkvkit_cli(
        "generate", "--model", str(model_path), "--prompt", "To be, or", "--temperature", "0", "--max-tokens", "24",
        "--stats",
    )  # fmt: skip
    assert proc.stdout == expected.text
    assert "tok/s" in proc.stderr and "prompt: 9 tokens" in proc.stderr
    from_stdin = rwkvkit_cli(
        "generate", "--model", str(model_path), "--prompt", "-", "--temperature", "0", "--max-tokens", "24",
        stdin="To be, or",
    )  # fmt: skip
    assert from_stdin.stdout == expected.text and from_stdin.stderr == ""


def test_generate_sampling_flags_and_seed(model_path: Path, loaded) -> None:
    model, tok = loaded
    flags = ["--temperature", "0.8", "--top-p", "0.9", "--top-k", "50", "--min-p", "0.01",
             "--presence-penalty", "0.5", "--frequency-penalty", "0.5", "--seed", "4", "--max-tokens", "30"]  # fmt: skip
    a = rwkvkit_cli("generate", "--model", str(model_path), "--prompt", "Hi", *flags).stdout
    expected = rwkvkit.generate_text(
        model, tok, "Hi", temperature=0.8, top_p=0.9, top_k=50, min_p=0.01, presence_penalty=0.5,
        frequency_penalty=0.5, seed=4, max_tokens=30,
    )  # fmt: skip
    assert a == expected.text


def test_generate_stop_string(model_path: Path, loaded) -> None:
    model, tok = loaded
    full = rwkvkit.generate_text(model, tok, "abc", temperature=0, max_tokens=40).text
    stop = full[5:7]  # a stop string that the greedy text contains
    proc = rwkvkit_cli(
        "generate", "--model", str(model_path), "--prompt", "abc", "--temperature", "0", "--stop", stop,
        "--max-tokens", "40",
    )  # fmt: skip
    assert proc.stdout == full[: full.index(stop)]


def test_generate_save_and_continue_state(model_path: Path, loaded, tmp_path: Path) -> None:
    model, tok = loaded
    whole = rwkvkit.generate_text(model, tok, "Once", temperature=0, max_tokens=20)
    state = tmp_path / "once.state"
    first = rwkvkit_cli(
        "generate", "--model", str(model_path), "--prompt", "Once", "--temperature", "0", "--max-tokens", "8",
        "--save-state", str(state),
    )  # fmt: skip
    rest = rwkvkit_cli(
        "generate",
        "--model",
        str(model_path),
        "--state",
        str(state),
        "--temperature",
        "0",
        "--max-tokens",
        "12",
    )
    py_first = rwkvkit.generate_text(model, tok, "Once", temperature=0, max_tokens=8, keep_state=True)
    py_rest = rwkvkit.generate_text(model, tok, "", state=py_first.prefix(), temperature=0, max_tokens=12)
    assert len(whole.token_ids) == 20  # no end-of-text token cut it short
    assert py_first.token_ids + py_rest.token_ids == whole.token_ids
    assert (first.stdout, rest.stdout) == (py_first.text, py_rest.text)
    assert rwkvkit.load_state(state, model).tokens_consumed == 4 + 8
    other = tmp_path / "other.pth"
    torch.save(random_rwkv4_state_dict(CONFIG, seed=24), other)
    refused = rwkvkit_cli(
        "generate", "--model", str(other), "--state", str(state), "--prompt", "x", check=False
    )
    assert refused.returncode == 2 and "another model" in refused.stderr and "Traceback" not in refused.stderr


def test_without_a_model_the_message_says_how_to_pass_one() -> None:
    if default_model_path() is not None:
        pytest.skip("this install bundles a default model")
    proc = rwkvkit_cli("generate", "--prompt", "hi", check=False)
    assert proc.returncode == 2 and "--model" in proc.stderr and "Traceback" not in proc.stderr
    proc = rwkvkit_cli("chat", check=False, stdin="hello\n")
    assert proc.returncode == 2 and "--model" in proc.stderr


def replies(stdout: str) -> list[str]:
    parts = stdout.split("Assistant: ")
    assert parts[0] == ""
    return [p.removesuffix("\n") for p in parts[1:]]


def test_chat_two_turns_save_and_load(model_path: Path, loaded, tmp_path: Path) -> None:
    model, tok = loaded
    saved = tmp_path / "chat.state"
    args = ["chat", "--model", str(model_path), "--temperature", "0", "--max-tokens", "40", "--stats"]
    first = rwkvkit_cli(*args, "--system", "Be brief.", stdin=f"Hello there\n/save {saved}\nHow are you?\n")
    r1, r2 = replies(first.stdout)
    # the same conversation through the Python API
    chat = Chat(model, tok, system="Be brief.", temperature=0, max_tokens=40)
    assert chat.reply("Hello there") == r1
    assert chat.reply("How are you?") == r2
    # turn 2 fed only its own text: the history was never processed again
    stats = [line for line in first.stderr.splitlines() if line.startswith("prompt:")]
    assert len(stats) == 2
    assert f"prompt: {len(tok.encode('User: How are you?' + chr(10) * 2 + 'Assistant:'))} tokens" in stats[1]
    # a new process that loads the state after turn 1 answers turn 2 the same way
    second = rwkvkit_cli(*args, stdin=f"/load {saved}\nHow are you?\n")
    assert replies(second.stdout) == [r2]
    assert "loaded" in second.stderr
    # /reset goes back to the start: the first turn is answered as at first
    third = rwkvkit_cli(*args, "--system", "Be brief.", stdin="Hello there\n/reset\n/help\nHello there\n")
    assert replies(third.stdout) == [r1, r1] and "/save FILE" in third.stderr


def test_chat_reports_bad_commands_and_keeps_going(model_path: Path, tmp_path: Path) -> None:
    proc = rwkvkit_cli(
        "chat", "--model", str(model_path), "--temperature", "0", "--max-tokens", "5",
        stdin=f"/load {tmp_path / 'nope.state'}\n/save\n/frobnicate\n/save {tmp_path / 'x.state'}\nhi\n",
    )  # fmt: skip
    assert "no such state file" in proc.stderr and "usage: /save FILE" in proc.stderr
    assert "unknown command /frobnicate" in proc.stderr and "nothing to save yet" in proc.stderr
    assert len(replies(proc.stdout)) == 1
