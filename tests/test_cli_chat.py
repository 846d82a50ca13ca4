"""``rwkvkit chat`` run as a user runs it: turns piped in, /commands, the state saved and loaded,
each turn fed only its own text; compared with rwkvkit.chat.Chat on the same weights."""

from __future__ import annotations

from pathlib import Path

from cli_run import rwkvkit_cli

from rwkvkit.chat import Chat


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
