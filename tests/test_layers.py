"""The package's import graph: no cycles, and no module imports a layer above its own.

Read from the source with ``ast`` (nothing is imported), so a new upward import or a cycle fails
here before it tangles the house. The layers, lowest first; a module may import its own layer's
modules (without a cycle) and any layer below.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rwkvkit"

# Top-level parts of the package, lowest layer first. One entry can hold several parts.
LAYERS: list[set[str]] = [
    {"errors", "defaults"},
    {"fileio", "dtypes", "state", "device"},
    {"ops", "sampling"},
    {"models"},
    {
        "formats",
        "fused",
        "quantize",
        "testing",
        "tokenizer",
    },  # a tokenizer may come from a GGUF file's metadata
    {"inference", "statefile", "cuda_graphs", "compiled", "lora"},
    {"checkpoint", "engine"},
    {"generate"},
    {"chat", "convert"},  # convert writes the chat template into GGUF files and HF folders
    {"eval", "train", "bench"},
    {"serve", "finetune"},
    {"cli"},
    {"__main__"},
]


def module_name(path: Path) -> str:
    parts = ["rwkvkit", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (``from .. import __version__`` names the root)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def layer_of(name: str) -> int:
    part = name.split(".")[1] if "." in name else ""
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"{name} belongs to no layer: add its top-level part to LAYERS in this test")


def graph() -> dict[str, set[str]]:
    modules = package_modules()
    # The package root is the public facade: it names everything lazily (PEP 562) and is left out,
    # except as the home of __version__, which any layer may read.
    return {
        name: {m for m in imports_of(name, path, modules) if m != "rwkvkit"}
        for name, path in modules.items()
        if name != "rwkvkit"
    }


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{name} (layer {layer_of(name)}) imports {dep} (layer {layer_of(dep)})"
        for name, deps in graph().items()
        for dep in sorted(deps)
        if layer_of(dep) > layer_of(name)
    ]
    assert not upward, "\n".join(upward)


def test_import_graph_has_no_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_check_sees_real_imports() -> None:
    """Guard against a check that passes because it reads nothing."""
    edges = graph()
    assert "rwkvkit.ops.wkv7" in edges["rwkvkit.models.rwkv7"]
    assert "rwkvkit.engine" in edges["rwkvkit.generate"]
    assert layer_of("rwkvkit.cli.generate") > layer_of("rwkvkit.generate") > layer_of("rwkvkit.engine")
