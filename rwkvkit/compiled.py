"""Compiling a model's one-token step with ``torch.compile`` (inductor), cached across processes.

What it buys (benchmarks/compile.py): inductor fuses the step's many small elementwise operations
around the native kernels (which it calls as they are: they are registered ops) and runs the rest
without Python's per-operation cost. What it costs: on the CPU inductor writes and builds C++, so
it needs a C++ compiler at run time, and the first compilation of a model shape takes a minute or
more. Its artefacts are kept in ``~/.cache/rwkvkit/inductor`` (inductor's FX graph cache), so later
processes on the machine skip the code generation and pay only the tracing, seconds.

Opt-in (``compile_step(model)``, the command line's ``--compile``): a short generation would spend
more time compiling than it saves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .ops.native import compiler, say_once


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rwkvkit" / "inductor"


def compile_step(model: nn.Module) -> bool:
    """Replace ``model.step`` (and with it one-token calls of the model) by a compiled version of
    itself, same signature and results; returns whether it did. Without a C++ compiler on the CPU
    it says so once and leaves the step as it is. If compiling fails at the first call, the step
    goes back to the uncompiled one, with a note."""
    device = next(model.parameters()).device
    if device.type == "cpu" and compiler() is None:
        say_once(
            "no C++ compiler found (install g++ or set CXX): --compile is ignored, the step runs uncompiled"
        )
        return False
    # inductor reads its cache location from the environment only; a user's choice is kept
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir()))
    eager = type(model).step.__get__(model)  # the model's own step (not rwkvkit.fused's native call)
    compiled = torch.compile(eager)

    def step(*args: Any, **kwargs: Any) -> Any:
        try:
            return compiled(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            say_once(f"compiling the step failed ({type(e).__name__}); it runs uncompiled")
            model.step = eager  # type: ignore[method-assign]
            return eager(*args, **kwargs)

    model.step = step  # type: ignore[method-assign]
    return True
