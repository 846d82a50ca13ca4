"""``load_model`` on the Hugging Face Hub (rwkvkit/formats/hub.py) with the real ``huggingface_hub``
client, against a local server that speaks the Hub's HTTP API (tests/hub_server.py; there is no network
here): ``hf://OWNER/REPO/FILE``, revisions (branch, tag, commit), bare repository ids (an HF folder,
a repository with one checkpoint, one with several), then the same offline (``HF_HUB_OFFLINE=1``) and
with the Hub unreachable, from the cache huggingface_hub laid out, without a single request. The
loads run in subprocesses, as a user's would, with ``HF_ENDPOINT`` and ``HF_HUB_CACHE`` set.

What this cannot test: the real huggingface.co (its redirects to a CDN, LFS and Xet storage, gated and
private repositories); those paths are huggingface_hub's own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_run import save_tiny_model
from hub_server import HubServer

from rwkvkit.convert import convert
from rwkvkit.errors import CheckpointError
from rwkvkit.formats.hub import HubRef, is_hub_reference, parse_hub_ref

REPO = Path(__file__).resolve().parents[1]
TOKENS = [1, 5, 9, 200, 33]

LOADER = r"""
import json, sys, torch
import rwkvkit
from rwkvkit.errors import RwkvkitError
out = {}
for ref in json.loads(sys.argv[1]):
    try:
        with torch.no_grad():
            model = rwkvkit.load_model(ref)
            out[ref] = ["ok", model(TOKENS)[0][0].tolist(), str(model.source.path)]
    except RwkvkitError as e:
        out[ref] = ["error", str(e), ""]
print(json.dumps(out))
""".replace("TOKENS", repr(TOKENS))


def load_in_subprocess(refs: list[str], env: dict[str, str], cwd: Path = REPO) -> dict[str, list]:
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps(refs)],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_with_terminal_stderr(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``argv`` with stderr on a pseudo-terminal; (exit status, what it wrote there)."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the other end closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.run(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=slave, timeout=300)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def local_logits(path: Path) -> torch.Tensor:
    import rwkvkit

    with torch.no_grad():
        return rwkvkit.load_model(path)(TOKENS)[0][0]


def assert_same(result: list, want: torch.Tensor) -> None:
    assert result[0] == "ok", result[1]
    assert torch.equal(torch.tensor(result[1]), want)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The server with four repositories: me/tiny (main and tag v1 at one commit, branch dev at
    another), me/folder (an HF folder plus stray .pth files), me/single (one checkpoint and a README),
    me/many (two checkpoints)."""
    d = tmp_path_factory.mktemp("hub-files")
    first, second = save_tiny_model(d / "a.pth", seed=1), save_tiny_model(d / "b.pth", seed=2)
    folder = convert(first, d / "folder", "hf")
    with HubServer() as server:
        server.first_commit = server.add_commit(
            "me/tiny", {"model.pth": first, "README.md": b"# tiny"}, ("main", "v1")
        )
        server.add_commit("me/tiny", {"model.pth": second, "README.md": b"# tiny"}, ("dev",))
        server.add_commit(
            "me/folder",
            {**{p.name: p for p in folder.iterdir()}, "old/model.pth": second, "unrelated.pth": second},
        )
        server.add_commit("me/single", {"weights/model.pth": second, "README.md": b"# one"})
        server.add_commit("me/many", {"a.pth": first, "b.pth": second})
        server.files = {"first": first, "second": second, "folder": folder}
        yield server


def hub_env(hub: HubServer, cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_ENDPOINT": hub.url,
            "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1", **extra}  # fmt: skip


def test_downloads_then_offline_then_unreachable(hub: HubServer, tmp_path: Path) -> None:
    first, second = local_logits(hub.files["first"]), local_logits(hub.files["second"])
    folder = local_logits(hub.files["folder"])
    cached = ["hf://me/tiny/model.pth", "hf://me/tiny@dev/model.pth", "hf://me/tiny@v1/model.pth",
              f"hf://me/tiny@{hub.first_commit}/model.pth", "me/folder", "me/single", "hf://me/tiny@dev"]  # fmt: skip
    errors = [
        "me/many",
        "hf://me/nope/model.pth",
        "hf://me/tiny/missing.pth",
        "hf://me/tiny@nobranch/model.pth",
    ]
    cache = tmp_path / "cache"
    online = load_in_subprocess(cached + errors, hub_env(hub, cache))
    assert_same(online["hf://me/tiny/model.pth"], first)
    assert_same(online["hf://me/tiny@dev/model.pth"], second)
    assert_same(online["hf://me/tiny@v1/model.pth"], first)
    assert_same(online[f"hf://me/tiny@{hub.first_commit}/model.pth"], first)
    assert_same(online["me/folder"], folder)
    assert Path(online["me/folder"][2]).name == hub.first_commit or Path(online["me/folder"][2]).is_dir()
    assert_same(online["me/single"], second)
    assert_same(online["hf://me/tiny@dev"], second)
    assert online["me/many"][0] == "error" and "2 checkpoints (a.pth, b.pth)" in online["me/many"][1]
    assert "hf://me/many/FILE" in online["me/many"][1]
    assert "no such repository" in online["hf://me/nope/model.pth"][1]
    assert "no such file" in online["hf://me/tiny/missing.pth"][1]
    assert "no such revision" in online["hf://me/tiny@nobranch/model.pth"][1]
    # The folder repository: config, tokenizer files and weights fetched; the stray checkpoints not.
    fetched = {p for method, p in hub.requests if method == "GET" and p.startswith("/me/folder/resolve/")}
    assert {p.rsplit("/", 1)[-1] for p in fetched} == {p.name for p in hub.files["folder"].iterdir()}
    assert all(p.startswith(str(cache)) for p in (online[r][2] for r in cached))

    # Offline: the same answers from the cache, and not one request.
    before = len(hub.requests)
    offline = load_in_subprocess([*cached, "hf://me/many/a.pth"], hub_env(hub, cache, HF_HUB_OFFLINE="1"))
    assert len(hub.requests) == before
    for ref in cached:
        assert offline[ref][:2] == online[ref][:2], ref
    assert offline["hf://me/many/a.pth"][0] == "error" and "cache" in offline["hf://me/many/a.pth"][1]

    # The Hub unreachable (nothing listens there): huggingface_hub falls back to its cache.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    unreachable = load_in_subprocess(
        [*cached[:1], "me/folder", "me/many"], {**hub_env(hub, cache), "HF_ENDPOINT": dead}
    )
    assert unreachable["hf://me/tiny/model.pth"][:2] == online["hf://me/tiny/model.pth"][:2]
    assert unreachable["me/folder"][:2] == online["me/folder"][:2]
    assert "cannot be reached" in unreachable["me/many"][1]


def test_a_local_path_wins_over_a_repository_id(hub: HubServer, tmp_path: Path) -> None:
    (tmp_path / "me").mkdir()
    save_tiny_model(tmp_path / "me" / "tiny", seed=3)  # a file named like the repository
    before = len(hub.requests)
    result = load_in_subprocess(["me/tiny"], hub_env(hub, tmp_path / "cache"), cwd=tmp_path)
    assert_same(result["me/tiny"], local_logits(tmp_path / "me" / "tiny"))
    assert len(hub.requests) == before


def test_the_command_line_shows_a_progress_bar_and_one_line_errors(hub: HubServer, tmp_path: Path) -> None:
    env = hub_env(hub, tmp_path / "cache")
    out = tmp_path / "out.safetensors"
    # stderr on a terminal, where huggingface_hub draws its download bar (it hides it in pipes).
    code, stderr = run_with_terminal_stderr(
        [
            sys.executable,
            "-m",
            "rwkvkit",
            "convert",
            "hf://me/tiny@dev/model.pth",
            str(out),
            "--to",
            "safetensors",
        ],
        env,
    )
    assert code == 0, stderr
    assert "model.pth" in stderr and "100%" in stderr, stderr  # the download bar
    assert torch.equal(local_logits(out), local_logits(hub.files["second"]))
    for ref, message in [("hf://me/nope/x.pth", "no such repository"), ("hf://me", "not a Hugging Face Hub reference"),
                         ("hf://me/tiny/../x", "not a file path"), ("nobody/nothing", "is no local file or folder")]:  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "rwkvkit", "convert", ref, str(out), "--to", "pth", "--force"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
        assert lines[0].startswith("rwkvkit convert: error: "), lines[0]


@pytest.mark.parametrize(
    ("text", "ref"),
    [("hf://BlinkDL/rwkv-7-world/RWKV-x070-World-0.1B.pth", HubRef("BlinkDL/rwkv-7-world", None, "RWKV-x070-World-0.1B.pth")),
     ("hf://a/b@v2.0/sub/m.gguf", HubRef("a/b", "v2.0", "sub/m.gguf")),
     ("hf://fla-hub/rwkv7-0.1B-world", HubRef("fla-hub/rwkv7-0.1B-world")),
     ("fla-hub/rwkv7-0.1B-world@main", HubRef("fla-hub/rwkv7-0.1B-world", "main")),
     ("a/b@refs%2Fpr%2F3", HubRef("a/b", "refs/pr/3"))],
)  # fmt: skip
def test_references_parse(text: str, ref: HubRef) -> None:
    assert parse_hub_ref(text) == ref
    assert is_hub_reference(text)


@pytest.mark.parametrize(
    "text", ["hf://", "hf://a", "hf://a/", "hf://a/b/", "hf://a/b//c", "hf://a/b/./c", "hf://a/b/c/../../x",
             "hf://a/b@/c", "hf://-a/b", "hf://a--b/c", "hf://a/b c", "a/b/c.pth", "hf://a/b@x@y/c"],
)  # fmt: skip
def test_bad_references_are_named(text: str) -> None:
    with pytest.raises(
        CheckpointError, match=r"Hub reference|not a file path|not a valid repository"
    ) as info:
        parse_hub_ref(text)
    assert repr(text) in str(info.value)


def test_what_is_not_a_reference(tmp_path: Path) -> None:
    assert not is_hub_reference(tmp_path / "a")  # a Path is always local
    assert not is_hub_reference("runs/model.pth")  # ends like a file: a mistyped local path
    assert not is_hub_reference("a/b/c")
    assert not is_hub_reference("model.pth")
    assert is_hub_reference("owner/repo")
