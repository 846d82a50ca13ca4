"""``rwkvkit generate`` run as a user runs it: in a subprocess, on a small random byte-level model
saved to disk, compared with the Python API on the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_run import printed, rwkvkit_cli, save_tiny_model

import rwkvkit
from rwkvkit.defaults import default_model_path


def test_generate_streams_only_the_continuation(model_path: Path, loaded) -> None:
    model, tok = loaded
    expected = rwkvkit.generate_text(model, tok, "To be, or", temperature=0, max_tokens=24)
    proc = rwkvkit_cli(
        "generate", "--model", str(model_path), "--prompt", "To be, or", "--temperature", "0", "--max-tokens", "24",
        "--stats",
    )  # fmt: skip
    assert proc.stdout == printed(expected.text)
    assert "tok/s" in proc.stderr and "prompt: 9 tokens" in proc.stderr
    from_stdin = rwkvkit_cli(
        "generate", "--model", str(model_path), "--prompt", "-", "--temperature", "0", "--max-tokens", "24",
        stdin="To be, or",
    )  # fmt: skip
    assert from_stdin.stdout == printed(expected.text) and from_stdin.stderr == ""


def test_generate_sampling_flags_and_seed(model_path: Path, loaded) -> None:
    model, tok = loaded
    flags = ["--temperature", "0.8", "--top-p", "0.9", "--top-k", "50", "--min-p", "0.01",
             "--presence-penalty", "0.5", "--frequency-penalty", "0.5", "--seed", "4", "--max-tokens", "30"]  # fmt: skip
    a = rwkvkit_cli("generate", "--model", str(model_path), "--prompt", "Hi", *flags).stdout
    expected = rwkvkit.generate_text(
        model, tok, "Hi", temperature=0.8, top_p=0.9, top_k=50, min_p=0.01, presence_penalty=0.5,
        frequency_penalty=0.5, seed=4, max_tokens=30,
    )  # fmt: skip
    assert a == printed(expected.text)


def test_generate_stop_string(model_path: Path, loaded) -> None:
    model, tok = loaded
    full = rwkvkit.generate_text(model, tok, "abc", temperature=0, max_tokens=40).text
    stop = full[5:7]  # a stop string that the greedy text contains
    proc = rwkvkit_cli(
        "generate", "--model", str(model_path), "--prompt", "abc", "--temperature", "0", "--stop", stop,
        "--max-tokens", "40",
    )  # fmt: skip
    assert proc.stdout == printed(full[: full.index(stop)])


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
    assert (first.stdout, rest.stdout) == (printed(py_first.text), printed(py_rest.text))
    assert rwkvkit.load_state(state, model).tokens_consumed == 4 + 8
    other = save_tiny_model(tmp_path / "other.pth", seed=24)
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
