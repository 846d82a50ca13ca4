"""``rwkvkit bench`` and its parts: rounds rotate their order, the machine line, a missing peer is a
note rather than a failure, and a whole (tiny) run through the command line. No speed is asserted:
speed is measured by benchmarks/, never by tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rwkvkit.bench.contenders import build_contenders
from rwkvkit.bench.machine import machine_info, machine_line
from rwkvkit.bench.timing import interleaved, summarize
from rwkvkit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_interleaved_rounds_rotate_and_summarize() -> None:
    order: list[str] = []
    tasks = {n: (lambda n=n: order.append(n) or float(len(order))) for n in "abc"}
    results = interleaved(tasks, rounds=3, warmup=1)
    assert order == list("abc" + "abc" + "bca" + "cab")  # warm-up, then each round starts one later
    assert results == {"a": [4.0, 9.0, 11.0], "b": [5.0, 7.0, 12.0], "c": [6.0, 8.0, 10.0]}
    assert summarize(results)["a"] == {"median": 9.0, "min": 4.0, "max": 11.0, "rounds": 3}


def test_machine_line_names_cpu_threads_versions_and_command() -> None:
    info = machine_info(3)
    line = machine_line(info)
    assert info["threads"] == 3 and info["versions"]["torch"]
    assert (
        line.startswith(f"Machine: {info['cpu']}, ") and "3 thread(s) used" in line and "Command: `" in line
    )


def test_a_missing_peer_is_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rwkvkit.bench.contenders as contenders

    def missing(*args: object) -> None:
        raise ImportError("no rwkv_cpp here", name="rwkv_cpp")

    monkeypatch.setattr(contenders, "rwkvcpp_contender", missing)
    made, notes = build_contenders(tmp_path / "m.pth", ["rwkvcpp-fp16"], tmp_path, 1)
    assert made == [] and notes == [
        "rwkvcpp-fp16: skipped, not installed (rwkv_cpp); run benchmarks/setup.sh"
    ]


def test_bench_command_on_a_tiny_random_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--shape", "tiny", "--contenders", "fp32", "--rounds", "1", "--decode-tokens", "2",
            "--prefill", "8", "--no-batch", "--threads", "1", "--workdir", str(tmp_path), "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table.startswith("Machine: ") and "| rwkvkit fp32, B=1 |" in table and "| rwkvkit fp32 |" in table
    result = json.loads(out.read_text())
    assert result["decode_tok_s"]["rwkvkit fp32, B=1"]["rounds"] == 1 and result["prefill_len"] == 8


def test_bench_cli_runs_on_a_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rwkvkit", "bench", "--shape", "tiny", "--contenders", "fp32,int8,plain-fp32",
         "--threads", "1", "--rounds", "1", "--decode-tokens", "2", "--prefill", "8",
         "--reference", "rwkvkit fp32 (plain modules)", "--workdir", str(tmp_path), "--json", str(out)],
        cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "rwkvkit int8, B=8" in proc.stdout and "prefill, 8 tokens" in proc.stdout
    assert out.exists()
