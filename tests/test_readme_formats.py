"""The README's shell snippets for the formats run as written: the "Command line" block (convert to
hf, rwkvcpp, safetensors, gguf, onnx, and generate from the Hub) and the ONNX block of "GGUF, the
Hugging Face Hub and ONNX". Each block runs verbatim in bash, in a folder holding the files it names
(model.pth: a tiny RWKV-4; rwkv7.pth: a World-vocabulary RWKV-7), with ``rwkvkit`` on PATH running
this checkout, and the Hub repository it names served by tests/hub_server.py (``HF_ENDPOINT``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import HubServer

import rwkvkit
from rwkvkit.convert import convert

REPO = Path(__file__).resolve().parents[1]


def bash_blocks(section: str) -> list[str]:
    """The ```bash blocks of the README section whose heading is ``section``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", body, re.DOTALL)


@pytest.fixture(scope="module")
def readme_env(tmp_path_factory, world_models):
    """(folder, environment) with the files and the Hub repository the snippets name."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "rwkvkit").symlink_to(REPO / "rwkvkit")  # the first line converts the bundled model
    shutil.copy(world_models["7"], folder / "rwkv7.pth")
    hub_folder = convert(world_models["7"], tmp_path_factory.mktemp("hub") / "fla", "hf")
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "rwkvkit").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rwkvkit "$@"\n')
    (bin_dir / "rwkvkit").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    with HubServer() as server:
        server.add_commit("fla-hub/rwkv7-1.5B-world", {p.name: p for p in hub_folder.iterdir()})
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
                   HF_ENDPOINT=server.url, HF_HUB_CACHE=str(folder / "hub-cache"),
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")  # fmt: skip
        yield folder, env


def run_block(block: str, folder: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(["bash", "-e", "-c", block], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"{block}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-3000:]}"
    return proc.stdout


def test_the_command_line_block_runs(readme_env) -> None:
    folder, env = readme_env
    block = "\n".join(bash_blocks("Command line"))  # the bundled model's conversions, then RWKV-7's
    assert "--to gguf" in block and "--to onnx" in block and "fla-hub/" in block
    out = run_block(block, folder, env)
    assert out.strip()  # the Hub model's generated text
    for name in ("out/config.json", "model.bin", "model.safetensors", "rwkv7-q8_0.gguf", "rwkv7.onnx"):
        assert (folder / name).exists(), name
    assert rwkvkit.load_model(folder / "rwkv7-q8_0.gguf").source.format == "gguf"
    assert any((folder / "hub-cache").glob("models--fla-hub--rwkv7-1.5B-world/snapshots/*/config.json"))


def test_the_onnx_block_runs(readme_env) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'rwkvkit[onnx]')")
    folder, env = readme_env
    (block,) = bash_blocks("GGUF, the Hugging Face Hub and ONNX")
    (folder / "rwkv7.onnx").unlink(
        missing_ok=True
    )  # the Command line block wrote it; convert will not replace it
    assert run_block(block, folder, env).strip().splitlines()[-1] == "torch.Size([1, 2, 65536])"
