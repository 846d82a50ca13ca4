"""``rwkvkit finetune`` as a user runs it: prepare chat data, state-tune the bundled model, and use
the run with generate, chat and eval; and every bad input is one line naming the problem, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_run import rwkvkit_cli

import rwkvkit
from rwkvkit.chat import Chat

CHAT = [
    {"messages": [{"role": "user", "content": f"Who goes there, friend {i}?"}, {"role": "assistant", "content": "Verily."}]}
    for i in range(12)
]  # fmt: skip
FAST = ["--ctx-len", "64", "--batch-size", "2", "--eval-windows", "2", "--sample-len", "4", "--threads", "1",
        "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("chat")
    (d / "chat.jsonl").write_text("".join(json.dumps(x) + "\n" for x in CHAT))
    rwkvkit_cli("prepare", str(d / "chat.jsonl"), "--out", str(d / "tokens"), "--no-progress")
    return d / "tokens"


@pytest.fixture(scope="module")
def state_run(chat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "state"
    r = rwkvkit_cli("finetune", "--method", "state", "--data", str(chat_data), "--out", str(out), "--steps", "3",
                    "--save-every", "3", "--eval-every", "3", *FAST)  # fmt: skip
    assert f"{out}: step 3, loss " in r.stdout
    return out


def test_state_run_is_what_generate_chat_and_eval_run(state_run: Path, tmp_path: Path) -> None:
    assert sorted(p.name for p in state_run.iterdir()) == [
        "checkpoints",
        "loss.png",
        "metrics.jsonl",
        "rwkvkit-run.json",
        "rwkvkit-run.lock",
        "samples.txt",
        "state.safetensors",
    ]  # fmt: skip  (the bundled model is an RWKV-4: no official state.pth)
    model = rwkvkit.load_model(state_run)
    tok = rwkvkit.load_tokenizer("byte")
    want = rwkvkit.generate_text(model, tok, "Who", max_tokens=16, temperature=0).text
    base = rwkvkit.generate_text(rwkvkit.load_model(rwkvkit.defaults.default_model_path()), tok, "Who",
                                 max_tokens=16, temperature=0).text  # fmt: skip
    got = rwkvkit_cli("generate", "--model", str(state_run), "--prompt", "Who", "--temperature", "0",
                      "--max-tokens", "16").stdout  # fmt: skip
    assert got == want + "\n" and got != base + "\n"  # generate ends its output with a newline
    with torch.no_grad():
        reply = Chat(model, tok, temperature=0, max_tokens=20).reply("Hello")
    chat = rwkvkit_cli(
        "chat", "--model", str(state_run), "--temperature", "0", "--max-tokens", "20", stdin="Hello\n"
    )
    assert chat.stdout == f"Assistant: {reply}\n"
    (tmp_path / "t.txt").write_text("User: Who goes there?\n\nAssistant: Verily.\n\n" * 4)
    rwkvkit_cli("eval", "--model", str(state_run), "--task", "perplexity", "--data", str(tmp_path / "t.txt"),
                    "--json", str(tmp_path / "e.json"), "--no-progress")  # fmt: skip
    assert json.loads((tmp_path / "e.json").read_text())[0]["metrics"]


def one_line_error(*args: str) -> str:
    r = rwkvkit_cli(*args, check=False)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


def test_bad_flags_and_files_are_one_line_errors(chat_data: Path, state_run: Path, tmp_path: Path) -> None:
    run = ["finetune", "--data", str(chat_data), "--out", str(tmp_path / "o"), *FAST]
    assert "the following arguments are required: --method" in one_line_error(*run)
    assert "invalid choice: 'qlora'" in one_line_error(*run, "--method", "qlora")
    assert "--lora-rank must be an integer >= 1" in one_line_error(
        *run, "--method", "lora", "--lora-rank", "0"
    )
    err = one_line_error(*run, "--method", "lora", "--lora-targets", "attention")
    assert "--lora-targets: attention names no linear layer of this model" in err
    assert "no such file or folder" in one_line_error(
        *run, "--method", "state", "--model", str(tmp_path / "nope.pth")
    )
    assert "no manifest.json" in one_line_error("finetune", "--method", "state", "--data", str(tmp_path),
                                                "--out", str(tmp_path / "o2"))  # fmt: skip
    err = one_line_error(*run[: -len(FAST)], "--method", "state", "--ctx-len", "16", "--threads", "1")
    assert "chat.jsonl:1: this example is" in err and "more than --ctx-len + 1 = 17" in err
    err = one_line_error("finetune", "--method", "full", "--data", str(chat_data), "--out", str(state_run),
                         "--resume", *FAST)  # fmt: skip
    assert "made by `rwkvkit finetune --method state`; it cannot be resumed with --method full" in err
    assert "a tuned initial state has no place in a hf file" in one_line_error(
        "convert", str(state_run), str(tmp_path / "hf"), "--to", "hf"
    )
    (tmp_path / "bad.jsonl").write_text(
        json.dumps(CHAT[0]) + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n"
    )
    err = one_line_error(
        "prepare", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "bad"), "--no-progress"
    )
    assert "bad.jsonl:2: no assistant message" in err
    err = one_line_error(
        "generate", "--model", str(state_run), "--state", str(tmp_path / "bad.jsonl"), "--prompt", "x"
    )
    assert "bad.jsonl: not a readable safetensors state file" in err
