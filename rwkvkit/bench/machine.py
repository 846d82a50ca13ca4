"""The machine a measurement ran on: every benchmark table starts with it.

Imports no torch (versions come from the installed packages' metadata), so that
benchmarks/report.py can render a saved result's machine without loading torch.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .. import __version__

PEERS = ("rwkv", "transformers", "rwkv_cpp", "llama_cpp_python")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _installed(package: str) -> str | None:
    try:
        return version(package.replace("_", "-"))
    except PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """What a result needs to be read later: CPU, threads, load, versions, the command line."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": _installed("torch")}
    versions.update({p: _installed(p) for p in PEERS})
    versions["rwkvkit"] = __version__
    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": versions,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def machine_line(m: dict[str, Any]) -> str:
    """One line for the top of a table: the machine, the versions and the command."""
    v = m["versions"]
    peers = ", ".join(f"{k} {v[k]}" for k in PEERS if v.get(k))
    load_avg = m.get("load_average_at_start")
    load_txt = f"; load average at start {load_avg[0]:.1f}" if load_avg else ""
    return (
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads']} thread(s) used{load_txt}. "
        f"Python {v['python']}, torch {v['torch']}, rwkvkit {v['rwkvkit']}; peers: {peers or 'none'}. "
        f"Command: `{m['command']}`."
    )
