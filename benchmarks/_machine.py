"""The machine line every benchmark table starts with."""

from __future__ import annotations

import os
import platform

import torch


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{model}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"load average {load:.1f} at start"
    )
