"""Running Triton kernels on the CPU, under Triton's interpreter (``TRITON_INTERPRET=1``).

The interpreter executes a kernel's Python body with NumPy, one program at a time, so the kernels'
arithmetic (ours in rwkvkit/ops/triton_wkv4.py, fla-core's behind rwkvkit/ops/fla_kernels.py) is
tested here on the same inputs as on a GPU. It decides at ``@triton.jit`` time, so
:func:`interpreted` imports the kernel modules with the variable set, and tests/conftest.py sets it
for the whole session on a machine without a GPU, before anything imports Triton (Triton's own
jitted helpers, ``tl.cumsum`` say, are made when ``triton.language`` is first imported). A module
imported earlier without it is refused: its kernels would need a GPU.

Triton 3.6's interpreter needs four repairs to run fla-core's kernels; each is a fault of the
interpreter, not of the kernels (they compile and run on a GPU as they are):
- its autotuner benchmarks every configuration through a GPU driver: here every configuration
  is as good as the first;
- it turns a scalar argument into a one-element array and calls ``int()`` on it, which NumPy 2.4
  refuses for arrays that are not 0-dimensional;
- loop variables of ``for i in range(n)`` stay Python ints, where compiled Triton makes them
  tensors (fla calls ``i_t.to(tl.int64)``): the loop body's first statement converts them;
- a module that aliased ``tl.gather`` before the interpreter patched ``triton.language`` calls
  the unpatched builtin: those aliases are pointed at a jitted wrapper.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from types import ModuleType

import pytest
import torch

_repaired = False
tl = None  # triton.language once imported: a jitted function must see it among its globals


def _repair_interpreter() -> None:
    global _repaired
    if _repaired:
        return
    import triton.runtime.autotuner as autotuner
    import triton.runtime.interpreter as interpreter

    autotuner.Autotuner._bench = lambda self, *args, config=None, **kwargs: [0.0, 0.0, 0.0]
    patch_tensor = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patched

    class LoopVariablesAsTensors(interpreter.ASTTransformer):
        def visit_For(self, node: ast.For) -> ast.For:
            self.generic_visit(node)
            if isinstance(node.target, ast.Name):
                name = node.target.id
                to_tensor = ast.Attribute(
                    ast.Name("interpreter_semantic", ast.Load()), "to_tensor", ast.Load()
                )
                convert = ast.Assign(
                    targets=[ast.Name(name, ast.Store())],
                    value=ast.Call(to_tensor, [ast.Name(name, ast.Load()), ast.Constant(False)], []),
                )
                node.body.insert(0, convert)
            return node

    interpreter.FunctionRewriter.ast_transformer = LoopVariablesAsTensors()
    _repaired = True


def _alias_gather() -> None:
    global tl
    import triton
    import triton.language as tl

    @triton.jit
    def gather(src, index, axis):
        return tl.gather(src, index, axis)

    for name, module in list(sys.modules.items()):
        if name.startswith("fla.") and getattr(module, "gather", None) is tl.gather:
            module.gather = gather


def _compiled(value: object) -> bool:
    """Whether ``value`` is a kernel made for a GPU (a JITFunction, possibly autotuned)."""
    while type(value).__name__ in ("Autotuner", "Heuristics"):
        value = value.fn  # type: ignore[attr-defined]
    return type(value).__name__ == "JITFunction"


def interpreted(*names: str) -> list[ModuleType]:
    """Import the named modules with Triton's interpreter on, or skip saying what is missing."""
    for package in ("triton", *(["fla"] if any("fla" in n for n in names) else [])):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install 'rwkvkit[gpu]' installs it)")
    from importlib.metadata import version

    if not version("triton").startswith("3.6."):  # read without importing Triton (it must not be, yet)
        pytest.skip(f"the interpreter repairs here are for Triton 3.6; this is {version('triton')}")
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        _repair_interpreter()
        importlib.import_module("triton.experimental.gluon")  # imported at the first launch otherwise
        modules = [importlib.import_module(n) for n in names]
        _alias_gather()
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before
    import triton.language.standard

    for module in [triton.language.standard, *modules]:
        if any(_compiled(v) for v in vars(module).values()):
            pytest.skip(f"{module.__name__} was imported before the interpreter was on; run this file alone")
    return modules


def kernel_module(device: torch.device, name: str, kernel: str) -> ModuleType:
    """The module ``name`` for a test on ``device``: its kernels interpreted on the CPU, compiled on a
    GPU. ``kernel`` names one of its kernels, to tell which kind this process imported."""
    if device.type == "cpu":
        return interpreted(name)[0]
    for package in ("triton", *(["fla"] if "fla" in name else [])):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install 'rwkvkit[gpu]' installs it)")
    module = importlib.import_module(name)
    if not _compiled(getattr(module, kernel)):
        pytest.skip(f"{name} was imported under the interpreter in this process; run -m cuda alone")
    return module
