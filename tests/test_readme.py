"""Every ```python and ```bash block of README.md runs as written.

The blocks run in document order, as a reader would run them, in a scratch folder laid out like a
checkout (``rwkvkit/``, ``scripts/``, ``benchmarks/`` linked from this repository and
``../shared`` from beside it), so that the files one block writes are there for the next. Python
blocks share one namespace (the README says its Python snippets continue one another); bash blocks
run with ``set -euo pipefail`` and ``rwkvkit`` on the PATH meaning this checkout's command, stdin
empty. A block that must not run here (it installs packages, needs GPUs, takes an hour) is marked
on the line before its fence, visible only in the source:

    <!-- readme-test: skip (the reason) -->

A block that talks to a running server (curl, the OpenAI client) is marked

    <!-- readme-test: with-server (ARGS) -->

and runs while ``rwkvkit serve --port 0 ARGS`` does, the README's address
(``http://127.0.0.1:8000``) replaced by the one that server printed (a fixed port may be taken).

Any README section added later is picked up by this test with no change to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.+)\)\s*-->")
WITH_SERVER = re.compile(r"<!--\s*readme-test:\s*with-server\s*\((.*)\)\s*-->")
README_URL = "http://127.0.0.1:8000"
FENCE = re.compile(r"^```(\w*)\s*$")
LINKED = ("rwkvkit", "scripts", "benchmarks")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # where the block starts in README.md
    skip: str | None
    server: str | None = None  # the block runs beside ``rwkvkit serve --port 0`` with these flags


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, with the skip reason marked before each, if any."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        start, lang = i, m.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = lines[start - 1] if start > 0 else ""
        marker, server = SKIP.search(before), WITH_SERVER.search(before)
        code = "\n".join(lines[start + 1 : end]) + "\n"
        blocks.append(Block(lang, code, start + 1, marker and marker.group(1), server and server.group(1)))
        i = end + 1
    return blocks


def test_blocks_are_found_with_their_markers() -> None:
    text = "a\n```python\nx = 1\n```\n<!-- readme-test: skip (too slow) -->\n```bash\nsleep 9\n```\n"
    text += "<!-- readme-test: with-server (--max-batch 2) -->\n```bash\ncurl URL\n```\n"
    assert readme_blocks(text) == [
        Block("python", "x = 1\n", 2, None),
        Block("bash", "sleep 9\n", 6, "too slow"),
        Block("bash", "curl URL\n", 10, None, "--max-batch 2"),
    ]


def runnable() -> list[Block]:
    return [b for b in readme_blocks(README.read_text(encoding="utf-8")) if b.lang in ("python", "bash")]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch checkout: this repo's code linked in, ``rwkvkit`` on the PATH."""
    root = tmp_path_factory.mktemp("readme")
    work = root / "repo"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(REPO / name)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (root / "shared").symlink_to(shared)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "rwkvkit"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rwkvkit "$@"\n')
    shim.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    return work


def test_every_snippet_runs(checkout: Path) -> None:
    """Runs the blocks in order; the first failure names the block's line in README.md."""
    blocks = runnable()
    assert blocks, "README.md has no python or bash blocks"
    env = {
        **os.environ,
        "PATH": f"{checkout.parent / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    namespace: dict = {"__name__": "__readme__"}
    skipped, took = [], []
    old_cwd = Path.cwd()
    os.chdir(checkout)
    try:
        for block in blocks:
            if block.skip:
                skipped.append(f"README.md:{block.line} ({block.skip})")
                continue
            t0 = time.perf_counter()
            with contextlib.ExitStack() as stack:
                if block.server is not None:
                    from rwkvkit.serve.launch import ServerProcess

                    args = ("--port", "0", *shlex.split(block.server))
                    server = stack.enter_context(ServerProcess(*args, env=env))
                    block = dataclasses.replace(block, code=block.code.replace(README_URL, server.url))
                run_block(block, checkout, env, namespace)
            took.append(f"README.md:{block.line} {block.lang}: {time.perf_counter() - t0:.1f} s")
    finally:
        os.chdir(old_cwd)
    print("ran:", *took, "not run:", *skipped, sep="\n  ")


def run_block(block: Block, checkout: Path, env: dict[str, str], namespace: dict) -> None:
    """One block: python in the shared namespace, bash in the scratch checkout; a failure names its line."""
    if block.lang == "python":
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"the python block at README.md:{block.line} failed: {e!r}") from e
    else:
        proc = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + block.code], cwd=checkout, env=env,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, (
            f"the bash block at README.md:{block.line} failed (exit {proc.returncode}):\n"
            f"{proc.stderr[-3000:]}"
        )
