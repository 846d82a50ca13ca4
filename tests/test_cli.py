"""The ``rwkvkit`` command itself: lazy dispatch (help and version import no torch and no verb),
bare ``rwkvkit``, every verb's help, every flag's default shown, flags declared once, and errors
as one line with exit status 2. The verbs' own behaviour: test_cli_<verb>.py."""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import REPO, rwkvkit_cli, save_tiny_model

import rwkvkit
from rwkvkit.cli import VERBS, build_parser, main, verb_parser

# Runs the command's entry point, then reports what it imported. SystemExit is how argparse ends
# --help and --version; the exit status is passed on.
PROBE = """
import json, sys
from rwkvkit.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def probe(*args: str) -> tuple[int, str, set[str]]:
    """Exit status, stdout and the modules imported by ``rwkvkit ARGS`` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return report["code"], proc.stdout, set(report["modules"])


@pytest.mark.parametrize("args", [["--help"], [], ["--version"], ["-h"]])
def test_help_and_version_import_no_torch_and_no_verb(args: list[str]) -> None:
    code, out, modules = probe(*args)
    assert "torch" not in modules, "rwkvkit's top-level help must not import torch"
    assert not any(m.startswith("rwkvkit.cli.") and m != "rwkvkit.cli" for m in modules), modules
    if args == ["--version"]:
        assert code == 0 and out.strip() == f"rwkvkit {rwkvkit.__version__}"
    elif args:
        assert code == 0 and all(verb in out for verb in VERBS)


def test_a_verb_imports_only_its_own_module() -> None:
    code, out, modules = probe("prepare", "--help")
    assert code == 0 and "--val-fraction" in out
    assert {m for m in modules if m.startswith("rwkvkit.cli.")} == {
        "rwkvkit.cli.prepare",
        "rwkvkit.cli.flags",
    }


def test_bare_rwkvkit_prints_the_help_and_exits_2() -> None:
    """No verb is a usage error (exit 2, like any other), but the user still gets the whole help."""
    proc = rwkvkit_cli(check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "usage: rwkvkit" in proc.stderr and all(verb in proc.stderr for verb in VERBS)


def test_every_verb_has_a_module_and_help() -> None:
    for name, verb in VERBS.items():
        parser = verb_parser(name)
        assert parser.prog == f"rwkvkit {name}"
        assert verb.help in parser.format_help()
    top = build_parser().format_help()
    assert all(verb.help.split(",")[0][:30] in " ".join(top.split()) for verb in VERBS.values())


def test_every_flag_shows_its_default() -> None:
    for name in VERBS:
        parser = verb_parser(name)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or action.required:
                continue
            if isinstance(action, argparse._HelpAction) or (
                not action.option_strings and action.nargs != "?"
            ):
                continue
            text = formatter._expand_help(action)
            assert "(default" in text, f"rwkvkit {name} {action.option_strings or action.dest}: {text!r}"


def test_flags_are_declared_once() -> None:
    """No flag is spelled out in two add_argument calls anywhere in the command's modules."""
    seen: dict[str, str] = {}
    for path in sorted((REPO / "rwkvkit" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"):
                        assert arg.value not in seen, f"{arg.value} in {seen.get(arg.value)} and {path.name}"
                        seen[arg.value] = path.name
    assert {
        "--model",
        "--tokenizer",
        "--device",
        "--dtype",
        "--json",
        "--no-progress",
        "--seed",
    } <= seen.keys()


# Every flag that existed before the command line was split into one module per verb.
FLAGS = {
    "generate": "--model --tokenizer --device --dtype --prompt --max-tokens --temperature --top-p --top-k --min-p "
    "--presence-penalty --frequency-penalty --penalty-decay --seed --stats --stop --state --save-state",
    "chat": "--model --tokenizer --device --dtype --system --state --max-tokens --temperature --top-p --top-k "
    "--min-p --presence-penalty --frequency-penalty --penalty-decay --seed --stats",
    "convert": "--to --dtype",
    "prepare": "--out --tokenizer --val-fraction --no-progress",
    "train": "--data --out --arch --n-layer --n-embd --ffn-mult --n-head --head-size --ctx-len --chunk-len "
    "--wkv-chunk --batch-size --grad-accum --lr --lr-final --warmup --decay --steps --weight-decay --betas "
    "--grad-clip --seed --precision --save-every --keep --eval-every --eval-windows --log-every --sample-len "
    "--sample-prompt --stop-after --resume --device --threads --no-progress",
    "eval": "--model --task --data --limit --batch-size --ctx-len --tokenizer --device --dtype --json --no-progress",
    "bench": "--shape --contenders --threads --rounds --decode-tokens --prefill --no-batch --reference "
    "--workdir --json",
}  # fmt: skip


@pytest.mark.parametrize("name", list(FLAGS))
def test_every_existing_flag_is_kept(name: str) -> None:
    have = {s for a in verb_parser(name)._actions for s in a.option_strings}
    assert set(FLAGS[name].split()) <= have, set(FLAGS[name].split()) - have


def test_usage_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["generate", "--temperature", "warm"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == "rwkvkit generate: error: argument --temperature: invalid float value: 'warm'\n"
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2 and capsys.readouterr().err.startswith("rwkvkit: error: argument VERB")


def test_library_error_is_one_line_exit_2(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "m.pth")
    proc = rwkvkit_cli(
        "generate", "--model", str(model), "--tokenizer", "world", "--prompt", "x", check=False
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "rwkvkit generate: error: the world tokenizer has 65536 tokens but the model only 256; "
        "pass the model's own tokenizer with --tokenizer\n"
    )


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """``rwkvkit generate ... | head -c 10``: the closed pipe ends the command as SIGPIPE would (141),
    with nothing on stderr, not as an "internal error". (The reader here is gone before the first
    token: whenever head leaves, the next write fails the same way.)"""
    import os

    model = save_tiny_model(tmp_path / "m.pth")
    read, write = os.pipe()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "rwkvkit", "generate", "--model", str(model), "--prompt", "x", "--seed", "0"]
    proc = subprocess.Popen(cmd, stdout=write, stderr=subprocess.PIPE, env=env)
    os.close(write)
    os.close(read)
    _, err = proc.communicate(timeout=300)
    assert (proc.returncode, err) == (141, b"")
