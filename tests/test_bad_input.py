"""The bad-input table: hostile and mistaken invocations of the ``rwkvkit`` command, each of which
must fail with one line on stderr, ``rwkvkit VERB: error: ...`` naming the problem, exit status 2,
no traceback, no hang (a timeout) and no memory blow-up (an address-space cap).

Each row runs in its own process (tests/bad_input_server.py forks one per row from an interpreter
that has imported the command once; rows with ``real=True`` run ``python -m rwkvkit`` itself, for
what only a fresh interpreter shows: argv bytes, stdin decoding). Rows that must *not* fail (a chat
session that survives a bad command, a resume over a torn metrics line) say ``code=0`` and what
stderr must contain.

To add a row: append a :class:`Row` to ``ROWS``. ``argv`` and ``stdin`` may name the shared assets
(``{model}``: a tiny byte-level RWKV-4 .pth, ``{st}`` its .safetensors, ``{hf}`` its Hugging Face
folder, ``{cpp}`` its rwkv.cpp file, ``{data}`` a prepared byte-token folder, ``{world_data}`` one
prepared with the World tokenizer, ``{run}`` a finished training run, ``{state}`` a state file of
``{model}``) and ``{dir}``, the row's own folder, where ``files`` are created first (bytes, text,
or a function ``(path, assets)`` that writes ``path``) and where the command runs. ``after`` checks
the row's folder once the command is over (e.g. that the previous file survived).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_run import CONFIG, REPO, save_tiny_model
from safetensors.torch import load_file, save_file
from train_runs import TEXT

from rwkvkit.cli import VERBS
from rwkvkit.testing import random_rwkv4_state_dict

AS_CAP_MB = 3072  # address space per row: the interpreter with torch maps ~0.7 GB before any work
TIMEOUT_S = 60


@dataclasses.dataclass(frozen=True)
class Assets:
    root: Path

    def __getattr__(self, name: str) -> Path:
        return self.root / ASSET_FILES[name]


ASSET_FILES = {
    "model": "tiny.pth",
    "st": "tiny.safetensors",
    "hf": "tiny-hf",
    "cpp": "tiny.bin",
    "data": "data",
    "world_data": "world-data",
    "run": "run",
    "state": "tiny.state",
    "corpus": "corpus.txt",
}

FileSpec = bytes | str | Callable[[Path, Assets], None]


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    argv: tuple[str, ...]
    expect: str  # a substring of stderr (case-insensitive)
    stdin: bytes | str | None = None
    files: Mapping[str, FileSpec] = dataclasses.field(default_factory=dict)
    code: int = 2
    real: bool = False  # run ``python -m rwkvkit`` in a fresh interpreter
    fsize: int | None = None  # bytes a file may grow to: writes past it fail (EFBIG), as on a full disk
    user: str | None = None  # run as this user (when the tests run as root, who may read anything)
    after: Callable[[Path, Assets, dict], None] | None = None
    skip: str | None = None  # a reason to skip this row on this machine


# ------------------------------------------------------------------------------------------------
# File builders


def tiny_sd() -> dict[str, torch.Tensor]:
    return random_rwkv4_state_dict(CONFIG, seed=23)


def pth_of(sd: dict[str, torch.Tensor]) -> Callable[[Path, Assets], None]:
    return lambda p, a: torch.save(sd, p)


def st_of(sd: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> Callable[[Path, Assets], None]:
    return lambda p, a: save_file(sd, str(p), metadata=meta)


def with_extra_block(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**sd, "blocks.99999999.ln1.weight": torch.ones(1)}


def st_config(value: str) -> Callable[[Path, Assets], None]:
    """The tiny model as safetensors whose rwkvkit_config metadata is ``value`` (raw text)."""
    return st_of(tiny_sd(), {"format": "pt", "rwkvkit_config": value})


def hf_folder(config: str | None = None, *, extra: Mapping[str, FileSpec] | None = None) -> Callable:
    """The tiny model's Hugging Face folder, config.json replaced by ``config`` (raw text) if given."""

    def make(path: Path, a: Assets) -> None:
        shutil.copytree(a.hf, path)
        if config is not None:
            (path / "config.json").write_text(config, encoding="utf-8", errors="surrogateescape")
        for name, spec in (extra or {}).items():
            write_spec(path / name, spec, a)

    return make


def hf_config_with(**changes: Any) -> Callable:
    def make(path: Path, a: Assets) -> None:
        cfg = json.loads((a.hf / "config.json").read_text())
        cfg.update(changes)
        hf_folder(json.dumps(cfg))(path, a)

    return make


def copy_of(asset: str, edit: Callable[[Path], None] | None = None) -> Callable[[Path, Assets], None]:
    def make(path: Path, a: Assets) -> None:
        src = getattr(a, asset)
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, path)
        if edit is not None:
            edit(path)

    return make


def flip_data_bit(path: Path) -> None:
    """Flip a bit inside the first stored tensor's bytes: only the CRC-32 can tell."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size >= 16)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + 5] ^= 0x10
    path.write_bytes(bytes(raw))


def shift_directory_offset(path: Path) -> None:
    """Point a tensor's central-directory entry at another entry's header (its offset field)."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    target = next(i for i in infos if "/data/" in i.filename)
    other = next(i for i in infos if i is not target)
    name = target.orig_filename.encode()
    at = raw.index(b"PK\x01\x02")  # the first central directory record; walk to the target's
    while raw[at + 46 : at + 46 + len(name)] != name:
        at = raw.index(b"PK\x01\x02", at + 4)
    raw[at + 42 : at + 46] = struct.pack("<I", other.header_offset)
    path.write_bytes(bytes(raw))


class Evil:
    """A pickle that would create a file named 'pwned' when unpickled."""

    def __reduce__(self) -> Any:
        return (open, ("pwned", "w"))


def mkfifo(path: Path, a: Assets) -> None:
    os.mkfifo(path)


def mkdir(path: Path, a: Assets) -> None:
    path.mkdir()


def unreadable(content: bytes) -> Callable[[Path, Assets], None]:
    def make(path: Path, a: Assets) -> None:
        path.write_bytes(content)
        path.chmod(0)

    return make


def readonly_dir(path: Path, a: Assets) -> None:
    path.mkdir()
    path.chmod(0o555)


def state_with(fill: float) -> Callable[[Path, Assets], None]:
    def make(path: Path, a: Assets) -> None:
        tensors = load_file(str(a.state))
        from safetensors import safe_open

        with safe_open(str(a.state), "pt") as f:
            meta = f.metadata()
        tensors["state.wkv_num"][0, 0, 0] = fill
        save_file(tensors, str(path), metadata=meta)

    return make


def state_meta(**changes: str) -> Callable[[Path, Assets], None]:
    def make(path: Path, a: Assets) -> None:
        from safetensors import safe_open

        with safe_open(str(a.state), "pt") as f:
            meta = {**f.metadata(), **changes}
        save_file(load_file(str(a.state)), str(path), metadata=meta)

    return make


def world_vocab(lines: list[str]) -> bytes:
    """A World-format vocabulary: all 256 single bytes, then ``lines``."""
    base = [f"{i + 1} {bytes([i])!r} 1" for i in range(256)]
    return ("\n".join(base + lines) + "\n").encode()


def data_with_manifest(**changes: Any) -> Callable[[Path, Assets], None]:
    def make(path: Path, a: Assets) -> None:
        shutil.copytree(a.data, path)
        m = json.loads((path / "manifest.json").read_text())
        for k, v in changes.items():
            if v is None:
                m.pop(k, None)
            else:
                m[k] = v
        (path / "manifest.json").write_text(json.dumps(m))

    return make


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def unchanged(name: str, asset: str) -> Callable[[Path, Assets, dict], None]:
    """The row's file ``name`` still holds what ``asset`` held (a failed write left it alone)."""

    def check(d: Path, a: Assets, r: dict) -> None:
        assert (d / name).read_bytes() == getattr(a, asset).read_bytes(), "the previous file was damaged"
        leftovers = [p.name for p in d.iterdir() if p.name.endswith(".tmp")]
        assert not leftovers, f"temp files left behind: {leftovers}"

    return check


def absent(name: str) -> Callable[[Path, Assets, dict], None]:
    def check(d: Path, a: Assets, r: dict) -> None:
        assert not (d / name).exists(), f"{name} was created"

    return check


def chat_went_on(d: Path, a: Assets, r: dict) -> None:
    """The session survived the bad command: the message after it got a reply."""
    assert r["stdout"].count("Assistant:") == 1, r["stdout"]


def nothing_generated(d: Path, a: Assets, r: dict) -> None:
    assert r["stdout"] == "", f"generated before failing: {r['stdout']!r}"


# ------------------------------------------------------------------------------------------------
# Checks and builders the rows use


def assert_exists(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"


def replies(n: int) -> Callable[[Path, Assets, dict], None]:
    def check(d: Path, a: Assets, r: dict) -> None:
        assert r["stdout"].count("Assistant:") == n, r["stdout"]

    return check


def gpt_sd() -> dict[str, torch.Tensor]:
    from rwkvkit.models.gpt import GPTConfig
    from rwkvkit.testing import random_gpt

    return {k: v.contiguous() for k, v in random_gpt(GPTConfig(256, 1, 32, 2, 64, 16)).state_dict().items()}


def gpt_with_config(value: str) -> Callable[[Path, Assets], None]:
    return lambda p, a: save_file(gpt_sd(), str(p), metadata={"rwkvkit_config": value})


def hf_tokenizer_json(big_id: int) -> str:
    vocab = {"a": 0, "<|endoftext|>": big_id}
    return json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "a"},
                       "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}})  # fmt: skip


def state_of_shape(shape: tuple[int, ...]) -> Callable[[Path, Assets], None]:
    def make(path: Path, a: Assets) -> None:
        from safetensors import safe_open

        with safe_open(str(a.state), "pt") as f:
            meta = f.metadata()
        tensors = {k: torch.zeros(shape) for k in load_file(str(a.state)) if k.startswith("state.")}
        save_file(tensors, str(path), metadata=meta)

    return make


def choice_line(label: Any) -> str:
    return json.dumps({"context": "a", "choices": ["b", "c"], "label": label}) + "\n"


def edit_run_file(run: Path, **changes: Any) -> None:
    info = json.loads((run / "rwkvkit-run.json").read_text())
    info["train"].update(changes)
    (run / "rwkvkit-run.json").write_text(json.dumps(info))


HELD_LOCKS: list[Any] = []  # lock files this process holds while the table runs


def lock_in_background(run: Path) -> None:
    """Hold the run folder's lock, as a training that is still running would."""
    import fcntl

    f = open(run / "rwkvkit-run.lock", "w")  # noqa: SIM115 (held open until the table is done)
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.write(f"{os.getpid()}\n")
    f.flush()
    HELD_LOCKS.append(f)


def tear_metrics(run: Path) -> None:
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "lo')


def leave_stale_lock_and_temp_files(run: Path) -> None:
    """What a training killed mid-save leaves: its lock file, temp files, a state without weights."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (run / "rwkvkit-run.lock").write_text(dead.stdout)
    (run / ".metrics.jsonl.0badf00d.tmp").write_text("{")
    (run / "checkpoints" / ".step-0000003.safetensors.0badf00d.tmp").write_bytes(b"half")
    (run / "checkpoints" / "step-0000005.train.pt").write_bytes(b"orphan")


def no_temp_files(name: str) -> Callable[[Path, Assets, dict], None]:
    def check(d: Path, a: Assets, r: dict) -> None:
        left = [
            p.name
            for p in (d / name).rglob("*")
            if p.name.endswith(".tmp") or p.name == "step-0000005.train.pt"
        ]
        assert not left, f"left behind: {left}"

    return check


def no_nonfinite_checkpoint(run: Path) -> None:
    from rwkvkit.formats.run import complete_steps, weights_path

    for step in complete_steps(run):
        for name, t in load_file(str(weights_path(run, step))).items():
            assert torch.isfinite(t).all(), f"checkpoint step {step}: {name} is not finite"


def load_hf_sd() -> dict[str, torch.Tensor]:
    from rwkvkit.formats.hf import blinkdl_to_hf

    return blinkdl_to_hf(tiny_sd())


def write_cpp(sd: dict[str, torch.Tensor], path: Path) -> None:
    from rwkvkit.formats.rwkvcpp import write_rwkvcpp

    write_rwkvcpp(path, sd, version="4", data_type="fp32")


GEN = ("generate", "--model", "{model}", "--max-tokens", "4", "--seed", "0")
TRAIN = ("train", "--data", "{data}", "--out", "{dir}/out", "--n-layer", "1", "--n-embd", "16",
         "--ctx-len", "16", "--batch-size", "1", "--steps", "2", "--eval-every", "0", "--threads", "1",
         "--no-progress")  # fmt: skip
EVAL = ("eval", "--model", "{model}", "--no-progress")
CHAT = ("chat", "--model", "{model}", "--max-tokens", "3", "--seed", "0")
FINETUNE = ("finetune", "--data", "{data}", "--out", "{dir}/out", "--method", "lora", "--ctx-len", "16",
            "--batch-size", "1", "--steps", "2", "--eval-every", "0", "--threads", "1", "--no-progress")  # fmt: skip
# finetune's own flags and the loop's, each given a bad value: (flag, value, what the message must say)
FINETUNE_ROWS = [
    ("--ctx-len", "0", "--ctx-len"), ("--bptt-len", "5", "--bptt-len"), ("--batch-size", "0", "--batch-size"),
    ("--grad-accum", "0", "--grad-accum"), ("--lr", "nan", "--lr"), ("--lr-final", "-1", "--lr-final"),
    ("--warmup", "-1", "--warmup"), ("--decay", "bogus", "--decay"), ("--steps", "0", "--steps"),
    ("--weight-decay", "nan", "--weight-decay"), ("--grad-clip", "-1", "--grad-clip"), ("--seed", "-3", "--seed"),
    ("--precision", "fp4", "--precision"), ("--save-every", "-1", "--save-every"), ("--keep", "-1", "--keep"),
    ("--eval-every", "-1", "--eval-every"), ("--eval-windows", "0", "--eval-windows"),
    ("--log-every", "0", "--log-every"), ("--sample-len", "-1", "--sample-len"),
    ("--sample-prompt", "\udcff", "--sample-prompt"), ("--stop-after", "-1", "--stop-after"),
    ("--device", "bogus", "--device"), ("--threads", "-2", "--threads"), ("--method", "qlora", "--method"),
    ("--model", "", "--model"), ("--lora-rank", "0", "--lora-rank"), ("--lora-alpha", "nan", "--lora-alpha"),
    ("--lora-dropout", "2", "--lora-dropout"), ("--lora-targets", "attention", "--lora-targets"),
]  # fmt: skip
SERVE = ("serve", "--model", "{model}", "--port", "0")  # every row fails before it would serve
BENCH = ("bench", "--shape", "tiny", "--workdir", "{dir}", "--rounds", "1", "--decode-tokens", "1", "--prefill", "0",
         "--contenders", "fp32")  # fmt: skip
# the sampling flags generate and chat share: (flag, value, what the message must say)
SAMPLING_ROWS = [
    ("--max-tokens", "-1", "--max-tokens"),
    ("--temperature", "-1", "temperature"),
    ("--top-p", "2", "top_p"),
    ("--top-k", "-1", "top_k"),
    ("--min-p", "2", "min_p"),
    ("--presence-penalty", "inf", "presence_penalty"),
    ("--frequency-penalty", "nan", "frequency_penalty"),
    ("--penalty-decay", "-1", "penalty_decay"),
    ("--seed", "-1", "--seed"),
]
NO_GPU = None if not torch.cuda.is_available() else "this machine has a GPU"
ROOT_ONLY_USER = "nobody"  # permission rows run as this user when the tests run as root


def _permission_rows_skip() -> str | None:
    if os.getuid() != 0:
        return None  # chmod 000 stops us as it stops anyone
    import pwd

    try:
        pwd.getpwnam(ROOT_ONLY_USER)
    except KeyError:
        return f"running as root and there is no user {ROOT_ONLY_USER!r} to drop to"
    return None


NO_USER = _permission_rows_skip()

# fmt: off
ROWS: list[Row] = [
    # ---- the command line itself
    Row("unknown-verb", ("frobnicate",), "invalid choice"),
    Row("unknown-flag", ("generate", "--bogus"), "unrecognized arguments"),
    Row("seed-2**64", (*GEN, "--seed", str(2**64), "--prompt", "x"), "--seed"),
    Row("seed-negative", (*GEN, "--seed", "-1", "--prompt", "x"), "--seed"),
    Row("device-bogus", (*GEN, "--device", "bogus", "--prompt", "x"), "--device"),
    Row("device-cuda-absent", (*GEN, "--device", "cuda", "--prompt", "x"), "cuda", skip=NO_GPU),
    Row("temperature-negative", (*GEN, "--temperature", "-1", "--prompt", "x"), "temperature"),
    Row("temperature-nan", (*GEN, "--temperature", "nan", "--prompt", "x"), "temperature"),
    Row("top-p-2", (*GEN, "--top-p", "2", "--prompt", "x"), "top_p"),
    Row("max-tokens-negative", (*GEN, "--max-tokens", "-1", "--prompt", "x"), "--max-tokens"),
    Row("penalty-inf", (*GEN, "--presence-penalty", "inf", "--prompt", "x"), "presence_penalty"),
    Row("generate-nothing", GEN, "nothing to continue"),
    Row("dtype-bogus", (*GEN, "--dtype", "fp8", "--prompt", "x"), "invalid choice"),
    Row("tokenizer-bogus", (*GEN, "--tokenizer", "gpt5", "--prompt", "x"), "unknown tokenizer"),
    Row("tokenizer-too-big", (*GEN, "--tokenizer", "world", "--prompt", "x"), "tokenizer has 65536 tokens"),
    # an unset shell variable (--model "$MODEL") is not the default: it would run what nobody asked for
    Row("model-empty-arg", (*GEN, "--model", "", "--prompt", "x"), "argument --model: empty", after=nothing_generated),
    Row("tokenizer-empty-arg", (*GEN, "--tokenizer", "", "--prompt", "x"), "argument --tokenizer: empty"),
    Row("state-empty-arg", (*GEN, "--prompt", "x", "--state", ""), "argument --state: empty"),
    Row("save-state-empty-arg", (*GEN, "--prompt", "x", "--save-state", ""), "argument --save-state: empty",
        after=nothing_generated),
    Row("convert-dst-empty-arg", ("convert", "{model}", "", "--to", "pth"), "argument dst: empty"),
    Row("prepare-out-empty-arg", ("prepare", "{corpus}", "--out", ""), "argument --out: empty",
        after=absent("manifest.json")),
    Row("train-out-empty-arg", (*TRAIN[:3], "--out", "", *TRAIN[5:]), "argument --out: empty",
        after=absent("rwkvkit-run.json")),
    Row("eval-json-empty-arg", (*EVAL, "--task", "perplexity", "--data", "{corpus}", "--json", ""),
        "argument --json: empty"),
    # ---- text that is not text
    Row("prompt-argv-invalid-utf8", (*GEN, "--prompt", "ROMEO\udcff"), "--prompt", real=True),
    Row("stop-lone-surrogate", (*GEN, "--prompt", "x", "--stop", "\udcff"), "--stop"),
    Row("system-lone-surrogate", ("chat", "--model", "{model}", "--system", "a\udce9"), "--system"),
    Row("prompt-stdin-invalid-utf8", (*GEN, "--prompt", "-"), "standard input", stdin=b"ROMEO\xff\xfe:\n"),
    Row("prompt-stdin-invalid-utf8-real", (*GEN, "--prompt", "-"), "standard input", stdin=b"\xc3\x28", real=True),
    Row("chat-invalid-utf8-line", ("chat", "--model", "{model}", "--max-tokens", "3", "--seed", "0"),
        "not valid utf-8", stdin=b"caf\xe9\nHello\n", code=0, after=chat_went_on),
    # ---- paths
    Row("model-missing", (*GEN, "--model", "{dir}/nope.pth", "--prompt", "x"), "no such file"),
    Row("model-empty-dir", (*GEN, "--model", "{dir}/d", "--prompt", "x"), "neither", files={"d": mkdir}),
    Row("model-fifo", (*GEN, "--model", "{dir}/fifo", "--prompt", "x"), "not a regular file", files={"fifo": mkfifo}),
    Row("model-name-too-long", (*GEN, "--model", "{dir}/" + "m" * 300, "--prompt", "x"), "too long"),
    Row("model-unreadable", (*GEN, "--model", "{dir}/m.pth", "--prompt", "x"), "permission denied",
        files={"m.pth": unreadable(b"PK\x03\x04" + b"\0" * 64)}, user=ROOT_ONLY_USER, skip=NO_USER),
    Row("state-is-dir", (*GEN, "--prompt", "x", "--state", "{dir}"), "is a directory"),
    Row("save-state-is-dir", (*GEN, "--prompt", "x", "--save-state", "{dir}/d"), "is a directory",
        files={"d": mkdir}, after=nothing_generated),
    Row("save-state-no-parent", (*GEN, "--prompt", "x", "--save-state", "{dir}/no/s.state"), "does not exist",
        after=nothing_generated),
    Row("save-state-readonly-dir", (*GEN, "--prompt", "x", "--save-state", "{dir}/ro/s.state"),
        "permission denied", files={"ro": readonly_dir}, user=ROOT_ONLY_USER, after=nothing_generated,
        skip=NO_USER),
    Row("convert-dst-is-dir", ("convert", "{model}", "{dir}/d", "--to", "pth"), "is a folder", files={"d": mkdir}),
    Row("convert-dst-parent-is-file", ("convert", "{model}", "{dir}/f/x.pth", "--to", "pth"), "not a directory",
        files={"f": b"x"}),
    Row("convert-no-overwrite", ("convert", "{model}", "{dir}/old.pth", "--to", "pth"), "--force",
        files={"old.pth": copy_of("st")}, after=unchanged("old.pth", "st")),
    Row("convert-dst-name-not-utf8", ("convert", "{model}", "{dir}/o\udcff.pth", "--to", "pth"), "", code=0,
        after=lambda d, a, r: assert_exists(d / "o\udcff.pth")),
    Row("convert-hf-dst-is-file", ("convert", "{model}", "{dir}/f", "--to", "hf"), "--to hf writes a folder", files={"f": b"x"}),
    Row("eval-json-is-dir", (*EVAL, "--task", "perplexity", "--data", "{corpus}", "--json", "{dir}"), "is a directory"),
    Row("prepare-out-is-file", ("prepare", "{corpus}", "--out", "{dir}/f"), "not a folder", files={"f": b"x"}),
    Row("train-out-is-file", (*TRAIN[:3], "--out", "{dir}/f", *TRAIN[5:]), "not a folder", files={"f": b"x"}),
    # ---- checkpoints
    Row("pth-extra-block", (*GEN, "--model", "{dir}/m.pth", "--prompt", "x"), "blocks.0..",
        files={"m.pth": pth_of(with_extra_block(tiny_sd()))}),
    Row("st-extra-block", (*GEN, "--model", "{dir}/m.st", "--prompt", "x"), "blocks.0..",
        files={"m.st": st_of(with_extra_block(tiny_sd()))}),
    Row("hf-extra-block", (*GEN, "--model", "{dir}/h", "--prompt", "x"), "blocks.0..",
        files={"h": hf_folder(extra={"model.safetensors": lambda p, a: save_file(
            {"rwkv.blocks.99999999.ln1.weight": torch.ones(1), **load_hf_sd()}, str(p))})}),
    Row("cpp-extra-block", (*GEN, "--model", "{dir}/m.bin", "--prompt", "x"), "blocks.0..",
        files={"m.bin": lambda p, a: write_cpp(with_extra_block(tiny_sd()), p)}),
    Row("pth-gap-in-blocks", (*GEN, "--model", "{dir}/m.pth", "--prompt", "x"), "blocks.0..",
        files={"m.pth": pth_of({k: v for k, v in tiny_sd().items() if not k.startswith("blocks.0.")})}),
    Row("empty-file", (*GEN, "--model", "{dir}/m.pth", "--prompt", "x"), "empty or truncated", files={"m.pth": b""}),
    Row("random-bytes", (*GEN, "--model", "{dir}/m.pth", "--prompt", "x"), "unrecognised",
        files={"m.pth": bytes(range(256)) * 16}),
    Row("pth-truncated", (*GEN, "--model", "{dir}/m.pth", "--prompt", "x"), "truncated or corrupt",
        files={"m.pth": copy_of("model", lambda p: p.write_bytes(p.read_bytes()[:3000]))}),
    Row("pth-crc", (*GEN, "--model", "{dir}/m.pth", "--prompt", "x"), "crc-32",
        files={"m.pth": copy_of("model", flip_data_bit)}),
    Row("pth-zip-offset", (*GEN, "--model", "{dir}/m.pth", "--prompt", "x"), "wrong place",
        files={"m.pth": copy_of("model", shift_directory_offset)}),
    Row("pth-nan-weights", (*GEN, "--model", "{dir}/m.pth", "--prompt", "x"), "nan",
        files={"m.pth": pth_of({**tiny_sd(), "emb.weight": torch.full((256, 32), float("nan"))})}),
    Row("pth-not-tensors", (*GEN, "--model", "{dir}/m.pth", "--prompt", "x"), "state dict of tensors",
        files={"m.pth": lambda p, a: torch.save([1, 2, 3], p)}),
    Row("pth-pickle-code", (*GEN, "--model", "{dir}/m.pth", "--prompt", "x"), "nothing was executed",
        files={"m.pth": lambda p, a: torch.save({"x": Evil()}, p)}, after=absent("pwned")),
    Row("st-config-not-json", (*GEN, "--model", "{dir}/m.st", "--prompt", "x"), "rwkvkit_config",
        files={"m.st": st_config("{not json")}),
    Row("st-config-list", (*GEN, "--model", "{dir}/m.st", "--prompt", "x"), "rwkvkit_config",
        files={"m.st": st_config("[1]")}),
    Row("st-config-null", (*GEN, "--model", "{dir}/m.st", "--prompt", "x"), "rwkvkit_config",
        files={"m.st": st_config("null")}),
    Row("st-config-eps-string", (*GEN, "--model", "{dir}/m.st", "--prompt", "x"), "layer_norm_eps",
        files={"m.st": st_config('{"layer_norm_eps": "abc"}')}),
    Row("st-config-eps-nan", (*GEN, "--model", "{dir}/m.st", "--prompt", "x"), "layer_norm_eps",
        files={"m.st": st_config('{"layer_norm_eps": NaN}')}),
    Row("st-config-eps-negative", (*GEN, "--model", "{dir}/m.st", "--prompt", "x"), "layer_norm_eps",
        files={"m.st": st_config('{"layer_norm_eps": -1e-5}')}),
    Row("st-config-eps-huge", (*GEN, "--model", "{dir}/m.st", "--prompt", "x"), "layer_norm_eps",
        files={"m.st": st_config('{"layer_norm_eps": 1e300}')}),
    Row("st-config-n-head-0", (*GEN, "--model", "{dir}/m.st", "--prompt", "x"), "n_head",
        files={"m.st": gpt_with_config('{"n_head": 0}')}),
    Row("st-config-n-head-3", (*GEN, "--model", "{dir}/m.st", "--prompt", "x"), "n_head",
        files={"m.st": gpt_with_config('{"n_head": 3}')}),
    Row("st-config-deep", (*GEN, "--model", "{dir}/m.st", "--prompt", "x"), "nested",
        files={"m.st": st_config('{"a": ' + nested(100_000) + "}")}),
    Row("hf-config-not-json", (*GEN, "--model", "{dir}/h", "--prompt", "x"), "config.json", files={"h": hf_folder("{")}),
    Row("hf-config-list", (*GEN, "--model", "{dir}/h", "--prompt", "x"), "config.json", files={"h": hf_folder("[]")}),
    Row("hf-config-null", (*GEN, "--model", "{dir}/h", "--prompt", "x"), "config.json", files={"h": hf_folder("null")}),
    Row("hf-config-deep", (*GEN, "--model", "{dir}/h", "--prompt", "x"), "nested",
        files={"h": hf_folder(nested(100_000))}),
    Row("hf-config-invalid-utf8", (*GEN, "--model", "{dir}/h", "--prompt", "x"), "utf-8",
        files={"h": hf_folder('{"model_type": "rwkv\udcff"}')}),
    Row("hf-config-huge", (*GEN, "--model", "{dir}/h", "--prompt", "x"), "larger than",
        files={"h": hf_folder(extra={"config.json": lambda p, a: os.truncate(p, 1 << 30)})}),
    Row("hf-eps-string", (*GEN, "--model", "{dir}/h", "--prompt", "x"), "layer_norm_epsilon",
        files={"h": hf_config_with(layer_norm_epsilon="abc")}),
    Row("hf-eps-zero", (*GEN, "--model", "{dir}/h", "--prompt", "x"), "layer_norm_epsilon",
        files={"h": hf_config_with(layer_norm_epsilon=0)}),
    Row("hf-eps-null", (*GEN, "--model", "{dir}/h", "--prompt", "x"), "layer_norm_epsilon",
        files={"h": hf_config_with(layer_norm_epsilon=None)}),
    Row("hf-model-type-list", (*GEN, "--model", "{dir}/h", "--prompt", "x"), "model_type",
        files={"h": hf_config_with(model_type=["rwkv"])}),
    Row("fla-head-dim-0", (*GEN, "--model", "{dir}/h", "--prompt", "x"), "head_dim",
        files={"h": hf_config_with(model_type="rwkv7", norm_eps=1e-5, head_dim=0)}),
    Row("hf-two-weight-files", (*GEN, "--model", "{dir}/h", "--prompt", "x"), "extra.safetensors",
        files={"h": hf_folder(extra={"extra.safetensors": st_of({"x": torch.ones(1)})})}),
    Row("cpp-truncated", (*GEN, "--model", "{dir}/m.bin", "--prompt", "x"), "truncated",
        files={"m.bin": copy_of("cpp", lambda p: p.write_bytes(p.read_bytes()[:5000]))}),
    Row("gguf-header-lies", (*GEN, "--model", "{dir}/m.gguf", "--prompt", "x"), "truncated or corrupt",
        files={"m.gguf": b"GGUF" + struct.pack("<IQQ", 3, 10**15, 10**15)}),
    Row("gguf-junk", (*GEN, "--model", "{dir}/m.gguf", "--prompt", "x"), "m.gguf",
        files={"m.gguf": b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 4}),
    Row("hub-reference-malformed", (*GEN, "--model", "hf://bad", "--prompt", "x"), "not a Hugging Face Hub reference"),
    # offline: huggingface_hub's retries (~25 s), then one line; online: the Hub's 401/404, one line
    Row("hub-file-unreachable-or-missing", (*GEN, "--model", "hf://rwkvkit-no-such-owner/no-such-repo/m.pth",
        "--prompt", "x"), "hf://rwkvkit-no-such-owner/no-such-repo/m.pth"),
    # ---- vocabularies
    Row("vocab-gguf-junk", (*GEN, "--tokenizer", "{dir}/t.gguf", "--prompt", "x"), "t.gguf",
        files={"t.gguf": b"GGUF" + struct.pack("<IQQ", 3, 0, 10**15)}),
    Row("vocab-huge-id", (*GEN, "--tokenizer", "{dir}/v.txt", "--prompt", "x"), "1000000000000",
        files={"v.txt": world_vocab(["1000000000000 'ab' 2"])}),
    Row("vocab-invalid-utf8", (*GEN, "--tokenizer", "{dir}/v.txt", "--prompt", "x"), "utf-8",
        files={"v.txt": world_vocab([]) + b"300 '\xff' 1\n"}),
    Row("vocab-json-huge-id", (*GEN, "--tokenizer", "{dir}/t.json", "--prompt", "x"), "t.json",
        files={"t.json": hf_tokenizer_json(10**12)}),
    Row("vocab-json-big-id", (*GEN, "--tokenizer", "{dir}/t.json", "--prompt", "x"), "largest token id",
        files={"t.json": hf_tokenizer_json(4_000_000_000)}),
    Row("vocab-is-dir", (*GEN, "--tokenizer", "{dir}/v.txt", "--prompt", "x"), "not a regular file",
        files={"v.txt": mkdir}),
    # ---- state files
    Row("state-nan", (*GEN, "--prompt", "x", "--state", "{dir}/s"), "nan", files={"s": state_with(float("nan"))}),
    Row("state-inf", (*GEN, "--prompt", "x", "--state", "{dir}/s"), "infinite", files={"s": state_with(float("inf"))}),
    Row("state-is-a-model", (*GEN, "--prompt", "x", "--state", "{st}"), "not an rwkvkit state file"),
    Row("state-truncated", (*GEN, "--prompt", "x", "--state", "{dir}/s"), "truncated or corrupt",
        files={"s": copy_of("state", lambda p: p.write_bytes(p.read_bytes()[:200]))}),
    Row("state-tokens-negative", (*GEN, "--prompt", "x", "--state", "{dir}/s"), "tokens_consumed",
        files={"s": state_meta(tokens_consumed="-5")}),
    Row("state-config-deep", (*GEN, "--prompt", "x", "--state", "{dir}/s"), "damaged",
        files={"s": state_meta(model_config=nested(100_000))}),
    Row("state-tokens-huge-int", (*GEN, "--prompt", "x", "--state", "{dir}/s"), "damaged",
        files={"s": state_meta(tokens_consumed="9" * 5000)}),
    Row("state-zero-size-batch", (*GEN, "--prompt", "x", "--state", "{dir}/s"), "batch size",
        files={"s": state_of_shape((2, 10**9, 0))}),
    # ---- chat and generate keep the user's work
    Row("chat-save-dir", ("chat", "--model", "{model}", "--max-tokens", "3", "--seed", "0"), "is a directory",
        stdin="Hi\n/save {dir}\nHello\n", code=0, after=replies(2)),
    Row("chat-save-missing-dir", ("chat", "--model", "{model}", "--max-tokens", "3", "--seed", "0"),
        "does not exist", stdin="Hi\n/save {dir}/new/c.state\nHello\n", code=0,
        after=lambda d, a, r: (replies(2)(d, a, r), absent("new")(d, a, r))),
    Row("chat-load-bogus", ("chat", "--model", "{model}", "--max-tokens", "3", "--seed", "0"),
        "not an rwkvkit state file", stdin="/load {st}\nHello\n", code=0, after=chat_went_on),
    # ---- disk full (writes past a file-size cap fail with EFBIG, as they would with ENOSPC)
    Row("convert-disk-full", ("convert", "{model}", "{dir}/old.st", "--to", "safetensors", "--force"),
        "old.st", files={"old.st": copy_of("st")}, fsize=20_000, after=unchanged("old.st", "st")),
    Row("convert-pth-disk-full", ("convert", "{st}", "{dir}/old.pth", "--to", "pth", "--force"),
        "old.pth", files={"old.pth": copy_of("model")}, fsize=20_000, after=unchanged("old.pth", "model")),
    Row("save-state-disk-full", (*GEN, "--prompt", "x", "--save-state", "{dir}/s"), "disk",
        files={"s": copy_of("state")}, fsize=1000, after=unchanged("s", "state")),
    Row("prepare-disk-full", ("prepare", "{corpus}", "--out", "{dir}/p", "--no-progress"), "train.bin", fsize=1000),
    Row("train-disk-full", (*TRAIN, "--save-every", "1"), "disk", fsize=30_000),
    Row("eval-json-disk-full", (*EVAL, "--task", "perplexity", "--data", "{corpus}", "--json", "{dir}/r.json"),
        "disk", fsize=100),
    # ---- training flags: refused before anything runs
    Row("train-steps-0", (*TRAIN, "--steps", "0"), "--steps"),
    Row("train-grad-accum-0", (*TRAIN, "--grad-accum", "0"), "--grad-accum"),
    Row("train-chunk-len-negative", (*TRAIN, "--chunk-len", "-1"), "--chunk-len"),
    Row("train-bptt-not-dividing", (*TRAIN, "--bptt-len", "5"), "--bptt-len"),
    Row("train-decay-bogus", (*TRAIN, "--decay", "bogus"), "--decay"),
    Row("train-precision-bogus", (*TRAIN, "--precision", "fp4"), "--precision"),
    Row("train-ctx-len-0", (*TRAIN, "--ctx-len", "0"), "--ctx-len"),
    Row("train-n-embd-0", (*TRAIN, "--n-embd", "0"), "--n-embd"),
    Row("train-n-layer-0", (*TRAIN, "--n-layer", "0"), "--n-layer"),
    Row("train-n-embd-huge", (*TRAIN, "--n-embd", "400000"), "does not fit in memory"),
    Row("train-log-every-0", (*TRAIN, "--log-every", "0"), "--log-every"),
    Row("train-batch-size-0", (*TRAIN, "--batch-size", "0"), "--batch-size"),
    Row("train-lr-negative", (*TRAIN, "--lr", "-1"), "--lr"),
    Row("train-lr-nan", (*TRAIN, "--lr", "nan"), "--lr"),
    Row("train-betas-2", (*TRAIN, "--betas", "0.9", "2"), "--betas"),
    Row("train-seed-negative", (*TRAIN, "--seed", "-3"), "--seed"),
    Row("train-threads-negative", (*TRAIN, "--threads", "-2"), "--threads"),
    Row("train-threads-huge", (*TRAIN, "--threads", "1000000000"), "--threads 1000000000"),
    Row("train-device-bogus", (*TRAIN, "--device", "bogus"), "--device"),
    Row("train-head-size", (*TRAIN, "--arch", "rwkv7", "--head-size", "5"), "--head-size"),
    Row("train-no-data", ("train", "--out", "{dir}/o"), "--data is required"),
    Row("train-lr-1e30", (*TRAIN, "--lr", "1e30", "--warmup", "0", "--steps", "4", "--save-every", "1"),
        "not finite", after=lambda d, a, r: no_nonfinite_checkpoint(d / "out")),
    # ---- training data and run folders
    Row("train-data-missing", ("train", "--data", "{dir}/none", *TRAIN[3:]), "manifest.json"),
    Row("train-manifest-no-dtype", ("train", "--data", "{dir}/d", *TRAIN[3:]), "dtype",
        files={"d": data_with_manifest(dtype=None)}),
    Row("train-manifest-bad-dtype", ("train", "--data", "{dir}/d", *TRAIN[3:]), "dtype",
        files={"d": data_with_manifest(dtype="float32")}),
    Row("train-manifest-tokens-string", ("train", "--data", "{dir}/d", *TRAIN[3:]), "train_tokens",
        files={"d": data_with_manifest(train_tokens="many")}),
    Row("train-manifest-list", ("train", "--data", "{dir}/d", *TRAIN[3:]), "manifest.json",
        files={"d": lambda p, a: (p.mkdir(), (p / "manifest.json").write_text("[]"))}),
    Row("train-manifest-vocab-0", ("train", "--data", "{dir}/d", *TRAIN[3:]), "vocab_size",
        files={"d": data_with_manifest(vocab_size=0)}),
    Row("train-tokens-beyond-vocab", ("train", "--data", "{dir}/d", *TRAIN[3:]), "vocabulary",
        files={"d": data_with_manifest(vocab_size=32)}),
    Row("train-existing-run", (*TRAIN[:3], "--out", "{dir}/r", *TRAIN[5:]), "--overwrite",
        files={"r": copy_of("run")}),
    Row("train-overwrite-and-resume", ("train", "--out", "{dir}/r", "--overwrite", "--resume"), "--overwrite",
        files={"r": copy_of("run")}),
    Row("train-resume-other-tokenizer", ("train", "--data", "{world_data}", "--out", "{dir}/r", "--resume"),
        "tokenize", files={"r": copy_of("run")}),
    Row("train-resume-changed-n-embd", ("train", "--out", "{dir}/r", "--resume", "--n-embd", "64"), "--n-embd 64",
        files={"r": copy_of("run")}),
    Row("train-resume-changed-arch", ("train", "--out", "{dir}/r", "--resume", "--arch", "gpt"), "--arch gpt",
        files={"r": copy_of("run")}),
    Row("train-resume-not-a-run", ("train", "--out", "{dir}", "--resume"), "not a training run"),
    Row("train-resume-run-file-deep", ("train", "--out", "{dir}/r", "--resume"), "nested",
        files={"r": copy_of("run", lambda p: (p / "rwkvkit-run.json").write_text(nested(100_000)))}),
    Row("train-resume-run-file-list", ("train", "--out", "{dir}/r", "--resume"), "rwkvkit-run.json",
        files={"r": copy_of("run", lambda p: (p / "rwkvkit-run.json").write_text("[]"))}),
    Row("train-resume-run-file-bad-lr", ("train", "--out", "{dir}/r", "--resume"), "--lr",
        files={"r": copy_of("run", lambda p: edit_run_file(p, lr=-1))}),
    Row("train-run-folder-locked", (*TRAIN[:3], "--out", "{dir}/r", *TRAIN[5:], "--overwrite"), "another training",
        files={"r": copy_of("run", lock_in_background)}),
    Row("train-resume-torn-metrics", ("train", "--out", "{dir}/r", "--resume", "--steps", "3"), "",
        code=0, files={"r": copy_of("run", tear_metrics)}),
    Row("train-stale-lock-and-temp-files", ("train", "--out", "{dir}/r", "--resume", "--steps", "3"), "",
        code=0, files={"r": copy_of("run", leave_stale_lock_and_temp_files)}, after=no_temp_files("r")),
    # ---- prepare and eval inputs
    Row("prepare-invalid-utf8-txt", ("prepare", "{dir}/a.txt", "--out", "{dir}/p"), "a.txt",
        files={"a.txt": b"ok\xff\n"}),
    Row("prepare-invalid-utf8-jsonl", ("prepare", "{dir}/a.jsonl", "--out", "{dir}/p"), "a.jsonl:2",
        files={"a.jsonl": b'{"text": "ok"}\n{"text": "\xff"}\n'}),
    Row("prepare-jsonl-deep", ("prepare", "{dir}/a.jsonl", "--out", "{dir}/p"), "nested",
        files={"a.jsonl": nested(100_000) + "\n"}),
    Row("prepare-jsonl-no-text", ("prepare", "{dir}/a.jsonl", "--out", "{dir}/p"), '"text"',
        files={"a.jsonl": '{"txt": "a"}\n'}),
    Row("prepare-val-fraction", ("prepare", "{corpus}", "--out", "{dir}/p", "--val-fraction", "2"), "--val-fraction"),
    Row("prepare-missing", ("prepare", "{dir}/none.txt", "--out", "{dir}/p"), "no such file"),
    Row("prepare-fifo", ("prepare", "{dir}/f.txt", "--out", "{dir}/p"), "not a regular file", files={"f.txt": mkfifo}),
    Row("eval-invalid-utf8", (*EVAL, "--task", "perplexity", "--data", "{dir}/a.txt"), "utf-8",
        files={"a.txt": b"\xff\xfe"}),
    Row("eval-invalid-utf8-jsonl", (*EVAL, "--task", "lambada", "--data", "{dir}/a.jsonl"), "a.jsonl:1",
        files={"a.jsonl": b'{"text": "a b\xff"}\n'}),
    Row("eval-label-huge", (*EVAL, "--task", "multiple-choice", "--data", "{dir}/a.jsonl"), "label",
        files={"a.jsonl": choice_line("9" * 5000)}),
    Row("eval-label-float", (*EVAL, "--task", "multiple-choice", "--data", "{dir}/a.jsonl"), "label",
        files={"a.jsonl": choice_line(1e300)}),
    Row("eval-label-negative", (*EVAL, "--task", "multiple-choice", "--data", "{dir}/a.jsonl"), "label",
        files={"a.jsonl": choice_line(-1)}),
    Row("eval-batch-size-0", (*EVAL, "--task", "perplexity", "--data", "{corpus}", "--batch-size", "0"), "--batch-size"),
    Row("eval-ctx-len-0", (*EVAL, "--task", "perplexity", "--data", "{corpus}", "--ctx-len", "0"), "--ctx-len"),
    Row("eval-limit-0", (*EVAL, "--task", "perplexity", "--data", "{corpus}", "--limit", "0"), "--limit"),
    Row("eval-data-dir", (*EVAL, "--task", "perplexity", "--data", "{dir}"), "directory"),
    Row("eval-data-fifo", (*EVAL, "--task", "perplexity", "--data", "{dir}/f"), "not a regular file",
        files={"f": mkfifo}),
    # ---- bench
    Row("bench-rounds-0", ("bench", "--rounds", "0", "--shape", "tiny", "--workdir", "{dir}"), "--rounds"),
    Row("bench-threads-0", ("bench", "--threads", "0", "--shape", "tiny", "--workdir", "{dir}"), "--threads"),
    Row("bench-threads-huge", ("bench", "--threads", "1000000000", "--shape", "tiny", "--workdir", "{dir}"),
        "--threads 1000000000"),
    Row("bench-contenders-unknown", ("bench", "--contenders", "nope", "--shape", "tiny", "--workdir", "{dir}"), "nope"),
    Row("bench-contenders-none", (*BENCH, "--contenders", ","), "--contenders names none"),
    Row("bench-shape-bogus", ("bench", "--shape", "7b", "--workdir", "{dir}"), "invalid choice"),
    Row("bench-workdir-is-file", (*BENCH[:3], "--workdir", "{dir}/f", *BENCH[5:]), "is a file", files={"f": b"x"}),
    Row("bench-workdir-parent-is-file", (*BENCH[:3], "--workdir", "{dir}/f/w", *BENCH[5:]), "not a directory",
        files={"f": b"x"}),
    Row("bench-decode-tokens-0", (*BENCH, "--decode-tokens", "0"), "--decode-tokens"),
    Row("bench-prefill-negative", (*BENCH, "--prefill", "-1"), "--prefill"),
    Row("bench-json-is-dir", (*BENCH, "--json", "{dir}"), "is a directory"),
    Row("bench-reference-unknown", (*BENCH, "--reference", "nosuch"), "--reference 'nosuch' names no row"),
    # ---- every other flag that takes a value, verb by verb (test_every_flag_has_a_row)
    *[Row(f"generate-{flag[2:]}-{value}", (*GEN, "--prompt", "x", flag, value), why) for flag, value, why in SAMPLING_ROWS],
    *[Row(f"chat-{flag[2:]}-{value}", (*CHAT, flag, value), why) for flag, value, why in SAMPLING_ROWS],
    Row("generate-quantize-bogus", (*GEN, "--prompt", "x", "--quantize", "int3"), "invalid choice"),
    Row("generate-threads-huge", (*GEN, "--prompt", "x", "--threads", "1000000000"), "--threads 1000000000"),
    Row("chat-quantize-bogus", (*CHAT, "--quantize", "int3"), "invalid choice"),
    Row("chat-threads-0", (*CHAT, "--threads", "0"), "--threads"),
    Row("eval-quantize-bogus", (*EVAL, "--task", "perplexity", "--data", "{corpus}", "--quantize", "q3"), "invalid choice"),
    Row("eval-threads-huge", (*EVAL, "--task", "perplexity", "--data", "{corpus}", "--threads", "1000000000"),
        "--threads 1000000000"),
    Row("bench-llama-cpp-missing", (*BENCH[:-1], "llamacpp-q8_0", "--llama-cpp", "{dir}/none"),
        "no contender can run"),
    Row("bench-llama-cpp-empty", (*BENCH, "--llama-cpp", ""), "argument --llama-cpp: empty"),
    Row("chat-device-bogus", (*CHAT, "--device", "bogus"), "--device"),
    Row("chat-dtype-bogus", (*CHAT, "--dtype", "fp8"), "invalid choice"),
    Row("chat-tokenizer-too-big", (*CHAT, "--tokenizer", "world"), "tokenizer has 65536 tokens"),
    Row("chat-state-missing", (*CHAT, "--state", "{dir}/none.state"), "no such state file"),
    Row("chat-state-nan", (*CHAT, "--state", "{dir}/s"), "nan", files={"s": state_with(float("nan"))}),
    Row("eval-device-bogus", (*EVAL, "--task", "perplexity", "--data", "{corpus}", "--device", "bogus"), "--device"),
    Row("eval-dtype-bogus", (*EVAL, "--task", "perplexity", "--data", "{corpus}", "--dtype", "fp8"), "invalid choice"),
    Row("eval-tokenizer-too-big", (*EVAL, "--task", "perplexity", "--data", "{corpus}", "--tokenizer", "world"),
        "tokenizer has 65536 tokens"),
    Row("convert-dtype-bogus", ("convert", "{model}", "{dir}/o.pth", "--to", "pth", "--dtype", "fp8"), "invalid choice",
        after=absent("o.pth")),
    Row("prepare-tokenizer-bogus", ("prepare", "{corpus}", "--out", "{dir}/p", "--tokenizer", "gpt5"), "unknown tokenizer",
        after=absent("p")),
    Row("chat-model-missing", ("chat", "--model", "{dir}/nope.pth"), "no such file"),
    Row("eval-model-missing", (*EVAL, "--model", "{dir}/nope.pth", "--task", "perplexity", "--data", "{corpus}"),
        "no such file"),
    Row("eval-task-bogus", (*EVAL, "--task", "mmlu", "--data", "{corpus}"), "invalid choice"),
    Row("convert-src-missing", ("convert", "{dir}/none.pth", "{dir}/o.pth", "--to", "pth"), "no such file"),
    Row("convert-src-random-bytes", ("convert", "{dir}/r.pth", "{dir}/o.pth", "--to", "pth"), "unrecognised",
        files={"r.pth": bytes(range(256)) * 16}, after=absent("o.pth")),
    Row("bench-model-missing", ("bench", "{dir}/none.pth", *BENCH[1:]), "no such file"),
    Row("convert-to-gguf-rwkv4", ("convert", "{model}", "{dir}/o.gguf", "--to", "gguf"), "RWKV-6 and RWKV-7 only",
        after=absent("o.gguf")),
    Row("convert-dtype-q8_0-to-pth", ("convert", "{model}", "{dir}/o.pth", "--to", "pth", "--dtype", "q8_0"),
        "GGUF file type", after=absent("o.pth")),
    Row("convert-to-onnx-bf16", ("convert", "{model}", "{dir}/o.onnx", "--to", "onnx", "--dtype", "bf16"), "fp32",
        after=absent("o.onnx")),
    Row("convert-to-bogus", ("convert", "{model}", "{dir}/o.ggml", "--to", "ggml"), "invalid choice"),
    Row("train-warmup-negative", (*TRAIN, "--warmup", "-1"), "--warmup"),
    Row("train-save-every-negative", (*TRAIN, "--save-every", "-1"), "--save-every"),
    Row("train-eval-every-negative", (*TRAIN, "--eval-every", "-1"), "--eval-every"),
    # ---- serve's flags (its HTTP inputs: tests/test_serve_bad_requests.py)
    Row("serve-model-missing", (*SERVE[:1], "--model", "{dir}/nope.pth", *SERVE[3:]), "no such file"),
    Row("serve-tokenizer-too-big", (*SERVE, "--tokenizer", "world"), "tokenizer has 65536 tokens"),
    Row("serve-device-bogus", (*SERVE, "--device", "bogus"), "--device"),
    Row("serve-dtype-bogus", (*SERVE, "--dtype", "fp8"), "invalid choice"),
    Row("serve-quantize-bogus", (*SERVE, "--quantize", "int3"), "invalid choice"),
    Row("serve-host-unknown", (*SERVE, "--host", "no.such.host.invalid"), "cannot listen"),
    Row("serve-host-empty", (*SERVE, "--host", ""), "argument --host: empty"),
    Row("serve-port-70000", (*SERVE, "--port", "70000"), "not a port"),
    Row("serve-api-key-empty", (*SERVE, "--api-key", ""), "argument --api-key: empty"),
    Row("serve-model-name-lone-surrogate", (*SERVE, "--model-name", "m\udcff"), "--model-name"),
    Row("serve-model-name-empty", (*SERVE, "--model-name", ""), "argument --model-name: empty"),
    Row("serve-max-batch-0", (*SERVE, "--max-batch", "0"), "--max-batch"),
    Row("serve-max-queue-negative", (*SERVE, "--max-queue", "-1"), "--max-queue"),
    Row("serve-max-prompt-tokens-0", (*SERVE, "--max-prompt-tokens", "0"), "--max-prompt-tokens"),
    Row("serve-max-tokens-limit-0", (*SERVE, "--max-tokens-limit", "0"), "--max-tokens-limit"),
    Row("serve-state-cache-mb-nan", (*SERVE, "--state-cache-mb", "nan"), "--state-cache-mb"),
    Row("serve-prefill-chunk-0", (*SERVE, "--prefill-chunk", "0"), "--prefill-chunk"),
    Row("serve-threads-huge", (*SERVE, "--threads", "1000000000"), "--threads 1000000000"),
    Row("serve-shutdown-timeout-nan", (*SERVE, "--shutdown-timeout", "nan"), "--shutdown-timeout"),
    Row("serve-log-level-bogus", (*SERVE, "--log-level", "loud"), "invalid choice"),
    Row("serve-chat-template-missing", (*SERVE, "--chat-template", "{dir}/none.json"), "no such file"),
    Row("serve-chat-template-deep", (*SERVE, "--chat-template", "{dir}/t.json"), "nested",
        files={"t.json": nested(100_000)}),
    Row("serve-chat-template-fifo", (*SERVE, "--chat-template", "{dir}/t.json"), "not a regular file",
        files={"t.json": mkfifo}),
    Row("serve-chat-template-invalid-utf8", (*SERVE, "--chat-template", "{dir}/t.json"), "utf-8",
        files={"t.json": b'{"user": "\xff"}'}),
    Row("serve-chat-template-list", (*SERVE, "--chat-template", "{dir}/t.json"), "--chat-template",
        files={"t.json": "[]"}),
    Row("train-eval-windows-0", (*TRAIN, "--eval-windows", "0"), "--eval-windows"),
    Row("train-ffn-mult-0", (*TRAIN, "--ffn-mult", "0"), "--ffn-mult"),
    Row("train-grad-clip-negative", (*TRAIN, "--grad-clip", "-1"), "--grad-clip"),
    Row("train-keep-negative", (*TRAIN, "--keep", "-1"), "--keep"),
    Row("train-lr-final-negative", (*TRAIN, "--lr-final", "-1"), "--lr-final"),
    Row("train-n-head-not-dividing", (*TRAIN, "--arch", "gpt", "--n-head", "3"), "--n-head 3"),
    Row("train-sample-len-negative", (*TRAIN, "--sample-len", "-1"), "--sample-len"),
    Row("train-sample-prompt-lone-surrogate", (*TRAIN, "--sample-prompt", "\udcff"), "--sample-prompt"),
    Row("train-stop-after-negative", (*TRAIN, "--stop-after", "-1"), "--stop-after"),
    Row("train-weight-decay-nan", (*TRAIN, "--weight-decay", "nan"), "--weight-decay"),
    *[Row(f"finetune-{flag[2:]}-{value.encode('utf-8', 'surrogateescape').hex() if not value.isascii() else value or 'empty'}",
          (*FINETUNE, flag, value), why) for flag, value, why in FINETUNE_ROWS],
    Row("finetune-betas-2", (*FINETUNE, "--betas", "0.9", "2"), "--betas"),
    Row("finetune-no-data", ("finetune", "--out", "{dir}/o", "--method", "lora"), "--data is required"),
    Row("finetune-data-missing", ("finetune", "--data", "{dir}/none", *FINETUNE[3:]), "manifest.json"),
    Row("finetune-out-empty-arg", (*FINETUNE[:3], "--out", "", *FINETUNE[5:]), "argument --out: empty"),
    Row("finetune-model-missing", (*FINETUNE, "--model", "{dir}/nope.pth"), "no such file"),
    Row("finetune-model-random-bytes", (*FINETUNE, "--model", "{dir}/m.pth"), "m.pth", files={"m.pth": b"\x00" * 64}),
    Row("serve-adapter-not-name-path", (*SERVE, "--adapter", "bogus"), "NAME=PATH"),
    Row("serve-adapter-missing", (*SERVE, "--adapter", "x={dir}/none"), "none"),
    Row("serve-state-missing", (*SERVE, "--state", "x={dir}/none"), "none"),
]
# fmt: on


# ------------------------------------------------------------------------------------------------
# Running the table


def write_spec(path: Path, spec: FileSpec, assets: Assets) -> None:
    if isinstance(spec, bytes):
        path.write_bytes(spec)
    elif isinstance(spec, str):
        path.write_text(spec, encoding="utf-8")
    else:
        spec(path, assets)


def build_assets(root: Path) -> Assets:
    from rwkvkit.convert import convert
    from rwkvkit.statefile import save_state
    from rwkvkit.train.config import TrainConfig
    from rwkvkit.train.data import prepare
    from rwkvkit.train.loop import train

    a = Assets(root)
    root.mkdir()
    save_tiny_model(a.model)
    convert(a.model, a.st, "safetensors")
    convert(a.model, a.hf, "hf")
    convert(a.model, a.cpp, "rwkvcpp")
    a.corpus.write_text(TEXT)
    prepare([str(a.corpus)], a.data, "byte", 0.2, progress=False)
    prepare([str(a.corpus)], a.world_data, "world", 0.2, progress=False)
    train(TrainConfig(data=str(a.data), out=str(a.run), n_layer=1, n_embd=16, ctx_len=16, batch_size=1,
                      steps=2, save_every=1, eval_every=0, threads=1, progress=False))  # fmt: skip
    import rwkvkit

    model = rwkvkit.load_model(a.model)
    _, state = model([1, 2, 3])
    save_state(a.state, state, model, tokens_consumed=3)
    return a


def substitute(text: str, assets: Assets, row_dir: Path) -> str:
    text = text.replace("{dir}", str(row_dir))
    for name in ASSET_FILES:
        text = text.replace("{" + name + "}", str(getattr(assets, name)))
    return text


def open_tree(root: Path) -> None:
    """Everyone may read the assets (rows run as an unprivileged user when the tests run as root)."""
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)


def run_real(job: dict) -> dict:
    """``python -m rwkvkit`` itself, argv passed as the bytes a shell would pass."""
    import resource
    import time

    def limits() -> None:
        cap = job["as_mb"] << 20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    argv = [os.fsencode(a) for a in job["argv"]]
    stdin = Path(job["stdin"]).read_bytes() if job["stdin"] else b""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONIOENCODING", None)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rwkvkit", *argv], input=stdin, capture_output=True, cwd=job["cwd"],
            env=env, timeout=job["timeout"], preexec_fn=limits,
        )  # fmt: skip
        code, out, err, timed_out = proc.returncode, proc.stdout, proc.stderr, False
    except subprocess.TimeoutExpired as e:
        code, out, err, timed_out = None, e.stdout or b"", e.stderr or b"", True
    decode = lambda b: b.decode("utf-8", "backslashreplace")  # noqa: E731
    return {"id": job["id"], "code": code, "stdout": decode(out), "stderr": decode(err),
            "seconds": time.monotonic() - t0, "timed_out": timed_out}  # fmt: skip


@pytest.fixture(scope="module")
def table() -> Any:
    root = Path(tempfile.mkdtemp(prefix="rwkvkit-bad-input-"))
    try:
        assets = build_assets(root / "assets")
        open_tree(root)
        jobs, real = [], []
        for row in ROWS:
            if row.skip:
                continue
            d = root / "rows" / row.id
            d.mkdir(parents=True)
            d.chmod(0o777)  # an unprivileged row may write here
            for name, spec in row.files.items():
                write_spec(d / name, spec, assets)
            stdin = None
            if row.stdin is not None:
                data = row.stdin.encode() if isinstance(row.stdin, str) else row.stdin
                stdin = str(root / "rows" / f"{row.id}.stdin")
                Path(stdin).write_bytes(os.fsencode(substitute(os.fsdecode(data), assets, d)))
            job = {
                "id": row.id,
                "argv": [substitute(a, assets, d) for a in row.argv],
                "cwd": str(d),
                "stdin": stdin,
                "as_mb": AS_CAP_MB,
                "fsize": row.fsize,
                "user": row.user,
                "timeout": TIMEOUT_S,
            }
            (real if row.real else jobs).append(job)
        jobs_file, results_file = root / "jobs.json", root / "results.json"
        jobs_file.write_text(json.dumps(jobs))
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        subprocess.run(
            [sys.executable, str(Path(__file__).parent / "bad_input_server.py"), str(jobs_file), str(results_file)],
            check=True, env=env, timeout=1800,
        )  # fmt: skip
        results = {r["id"]: r for r in json.loads(results_file.read_text())}
        for job in real:
            results[job["id"]] = run_real(job)
        if os.environ.get("RWKVKIT_BAD_INPUT_DUMP"):  # for whoever debugs the table: every result
            Path(os.environ["RWKVKIT_BAD_INPUT_DUMP"]).write_text(json.dumps(results, indent=1))
        yield assets, root / "rows", results
    finally:
        for f in HELD_LOCKS:
            f.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, table: Any) -> None:
    if row.skip:
        pytest.skip(row.skip)
    assets, rows_dir, results = table
    r = results[row.id]
    verb = row.argv[0]
    where = f"exit {r['code']}, {r['seconds']:.1f} s\nstdout: {r['stdout'][-2000:]}\nstderr: {r['stderr'][-4000:]}"
    assert not r["timed_out"], f"hung (no answer in {TIMEOUT_S} s)\n{where}"
    assert "Traceback" not in r["stderr"], where
    assert r["code"] == row.code, where
    if row.code == 2:
        lines = r["stderr"].splitlines()
        prefix = f"rwkvkit {verb}: error: " if verb in VERBS else "rwkvkit: error: "
        assert len(lines) == 1 and lines[0].startswith(prefix), f"not one '{prefix}...' line\n{where}"
    assert row.expect.lower() in r["stderr"].lower(), f"the message does not mention {row.expect!r}\n{where}"
    if row.after is not None:
        row.after(rows_dir / row.id, assets, r)


def test_rows_have_unique_ids() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))


def test_every_flag_has_a_row() -> None:
    """Every flag that takes a value, of every verb, is given a bad value by at least one row of that
    verb (one whose id or expected message names the flag): a new flag (or a new verb) comes with
    its bad-input rows, or this test names it."""
    import argparse

    from rwkvkit.cli import verb_parser

    missing = []
    for verb in VERBS:
        rows = [r for r in ROWS if r.argv[0] == verb]
        for action in verb_parser(verb)._actions:
            if not action.option_strings or action.nargs == 0 or action.help == argparse.SUPPRESS:
                continue  # positionals, switches (--force, --resume, --help) and hidden aliases
            names = [flag[2:] for flag in action.option_strings]
            # the row's id or its expected message names the flag it gives a bad value
            if not any(n in r.id or f"--{n}" in r.expect for r in rows for n in names):
                missing.append(f"{verb} {action.option_strings[0]}")
    assert not missing, f"flags no row gives a bad value: {', '.join(missing)}"
