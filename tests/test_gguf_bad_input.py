"""Hostile and broken GGUF files: each is a CheckpointError naming the file, raised before anything
large is allocated, quickly, and through the command line one line on stderr with exit status 2.

The files are variations of one small valid RWKV-7 GGUF (a 320-token vocabulary): truncated at every
part of the container, counts and lengths that lie (tensors, keys, array items, string lengths,
dimensions), tensor offsets past the end, unknown or undequantizable tensor types, duplicate tensors,
tensors missing or mis-shaped, metadata that contradicts the tensors or is no size (an unknown
container version, a zero alignment, a NaN epsilon, text for a number). They are all loaded in one
subprocess that records each one's error, time and peak memory, so a hang or a huge allocation
fails the test instead of the machine.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import torch
from cli_run import rwkvkit_cli

from rwkvkit.formats.gguf import write_gguf
from rwkvkit.models.rwkv7 import RWKV7, RWKV7Config
from rwkvkit.testing import random_rwkv7_state_dict

REPO = Path(__file__).resolve().parents[1]
CONFIG = RWKV7Config(vocab_size=320, n_layer=1, n_embd=64, ffn_dim=64, head_size=64, decay_lora=32, iclr_lora=32,
                     value_lora=32, gate_lora=32)  # fmt: skip
VOCAB = {i + 1: bytes([i]) for i in range(256)}
MAX_SECONDS = 10.0
MAX_GROWTH_MB = 150  # the valid file is ~0.2 MB; a load that grows this much took a count at its word


def _state_dict() -> dict[str, torch.Tensor]:
    model = RWKV7(CONFIG)
    model.load_state_dict(random_rwkv7_state_dict(CONFIG, seed=2))
    return model.state_dict()


def _write(path: Path, sd: dict[str, torch.Tensor], config: RWKV7Config = CONFIG) -> Path:
    write_gguf(path, sd, config, "fp32", VOCAB, chat_template="")
    return path


def _patched(src: Path, dst: Path, offset: int, fmt: str, value: float) -> Path:
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    dst.write_bytes(bytes(data))
    return dst


def _array_length_offset(reader: gguf.GGUFReader, key: str) -> int:
    """Where a metadata array's item count sits: key length, key, value type, item type, count."""
    return reader.fields[key].offset + 8 + len(key.encode()) + 4 + 4


def _scalar_offset(reader: gguf.GGUFReader, key: str) -> int:
    """Where a scalar metadata value sits: key length, key, value type, value."""
    return reader.fields[key].offset + 8 + len(key.encode()) + 4


def _tiny(path: Path, add: object) -> Path:
    """A one-tensor rwkv7 GGUF with whatever metadata ``add(writer)`` puts in."""
    import numpy as np

    w = gguf.GGUFWriter(path, "rwkv7")
    add(w)  # type: ignore[operator]
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


def _tensor_info_offset(reader: gguf.GGUFReader, name: str) -> tuple[int, int]:
    """(offset of the tensor's n_dims, its n_dims) in the tensor table."""
    t = next(t for t in reader.tensors if t.name == name)
    start = t.field.offset + 8 + len(name.encode())
    return start, int(t.field.parts[2][0])


def hostile_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, regex its error must match)."""
    good = _write(folder / "good.gguf", _state_dict())
    size = good.stat().st_size
    reader = gguf.GGUFReader(good)
    tensor_data = reader.tensors[0].data_offset
    cases: dict[str, tuple[Path, str]] = {}

    def cut(name: str, n: int, match: str) -> None:
        path = folder / f"{name}.gguf"
        path.write_bytes(good.read_bytes()[:n])
        cases[name] = (path, match)

    cut("truncated-header", 20, "truncated|corrupt")
    cut("truncated-metadata", 400, "truncated|corrupt")
    cut("truncated-tensor-table", tensor_data - 200, "truncated|corrupt")
    cut("truncated-data", size - 1, "truncated|corrupt")
    cut("half", size // 2, "truncated|corrupt")
    p = lambda name, off, fmt, v, match: cases.__setitem__(  # noqa: E731
        name, (_patched(good, folder / f"{name}.gguf", off, fmt, v), match)
    )
    p("lying-tensor-count", 8, "<Q", 1 << 40, "tensors")
    p("lying-key-count", 16, "<Q", 1 << 60, "metadata keys")
    p(
        "lying-array-length",
        _array_length_offset(reader, "tokenizer.ggml.tokens"),
        "<Q",
        1 << 50,
        "array items",
    )
    p(
        "array-one-too-long",
        _array_length_offset(reader, "tokenizer.ggml.token_type"),
        "<Q",
        321,
        "truncated|corrupt|tokens",
    )
    p("lying-key-length", 24, "<Q", 1 << 62, "truncated|corrupt")
    dims_at, n_dims = _tensor_info_offset(reader, "token_embd.weight")
    p("lying-n-dims", dims_at, "<I", 1 << 31, "truncated|corrupt")
    p("huge-dimension", dims_at + 4, "<Q", 1 << 61, "truncated|corrupt|shape")
    p("unknown-tensor-type", dims_at + 4 + 8 * n_dims, "<I", 250, "corrupt")
    p(
        "integer-tensor-type",
        dims_at + 4 + 8 * n_dims,
        "<I",
        int(gguf.GGMLQuantizationType.I32),
        "cannot dequantize",
    )
    p("offset-past-the-end", dims_at + 4 + 8 * n_dims + 4, "<Q", 1 << 40, "truncated|corrupt")
    p("unknown-gguf-version", 4, "<I", 99, "version 99")
    p("eps-nan", _scalar_offset(reader, "rwkv7.attention.layer_norm_epsilon"), "<f", float("nan"), "epsilon")
    p("head-size-not-dividing", _scalar_offset(reader, "rwkv7.wkv.head_size"), "<I", 7, "head size 7")
    p(
        "huge-lora-rank",
        _scalar_offset(reader, "rwkv7.attention.decay_lora_rank"),
        "<I",
        1 << 30,
        "not a size",
    )
    cases["zero-alignment"] = (_tiny(folder / "align.gguf", lambda w: w.add_uint32("general.alignment", 0)),
                               "alignment")  # fmt: skip
    cases["text-where-a-size-belongs"] = (
        _tiny(folder / "text-size.gguf", lambda w: w.add_string("rwkv7.embedding_length", "big")),
        "embedding_length.*not a size",
    )
    arch_len = reader.fields["general.architecture"].offset
    p(
        "unknown-architecture",
        arch_len + 8 + len(b"general.architecture") + 4 + 8,
        "<5s",
        b"llama",
        "'llama' model",
    )
    sd = _state_dict()
    missing = {k: v for k, v in sd.items() if k != "blocks.0.att.k_k"}
    cases["missing-tensor"] = (_write(folder / "missing.gguf", missing), "missing tensors.*time_mix_k_k")
    bad = dict(sd, **{"blocks.0.att.key.weight": torch.zeros(64, 32)})
    cases["mis-shaped-tensor"] = (_write(folder / "misshaped.gguf", bad), "time_mix_key.weight.*shape")
    extra = dict(sd, **{k.replace("blocks.0.", "blocks.1."): v for k, v in sd.items() if ".ln0." not in k})
    cases["unexpected-tensor"] = (_write(folder / "extra.gguf", extra), "unexpected tensors.*blk.1")
    nan = dict(sd, **{"blocks.0.att.value.weight": torch.full((64, 64), float("nan"))})
    cases["nan-weights"] = (_write(folder / "nan.gguf", nan), "NaN")
    import dataclasses

    wide = dataclasses.replace(CONFIG, n_embd=128, ffn_dim=128, head_size=64)
    cases["metadata-contradicts-tensors"] = (_write(folder / "wide.gguf", sd, wide), "shape")
    many = dataclasses.replace(CONFIG, n_layer=1 << 20)
    cases["lying-block-count"] = (_write(folder / "layers.gguf", sd, many), "layers")
    return cases


RUNNER = r"""
import json, resource, sys, time
import rwkvkit
from rwkvkit.errors import CheckpointError
out = {}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name, path in json.loads(sys.argv[1]).items():
    t = time.perf_counter()
    try:
        rwkvkit.load_model(path)
        result = ["loaded", ""]
    except CheckpointError as e:
        result = [type(e).__name__, str(e)]
    except Exception as e:  # anything else is a failure of the test
        result = ["UNEXPECTED " + type(e).__name__, str(e)]
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    out[name] = result + [time.perf_counter() - t, grown]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[Path, str, list]]:
    cases = hostile_files(tmp_path_factory.mktemp("hostile"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps({k: str(p) for k, (p, _) in cases.items()})],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: (p, match, results[k]) for k, (p, match) in cases.items()}


CASE_NAMES = [
    "truncated-header", "truncated-metadata", "truncated-tensor-table", "truncated-data", "half",
    "lying-tensor-count", "lying-key-count", "lying-array-length", "array-one-too-long", "lying-key-length",
    "lying-n-dims", "huge-dimension", "unknown-tensor-type", "integer-tensor-type", "offset-past-the-end",
    "unknown-architecture", "missing-tensor", "mis-shaped-tensor", "unexpected-tensor", "nan-weights",
    "metadata-contradicts-tensors", "lying-block-count", "unknown-gguf-version", "eps-nan",
    "head-size-not-dividing", "huge-lora-rank", "zero-alignment", "text-where-a-size-belongs",
]  # fmt: skip


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_gguf_is_a_checkpoint_error_naming_the_file(outcomes, name: str) -> None:
    import re

    path, match, (kind, message, seconds, grown_mb) = outcomes[name]
    assert kind == "CheckpointError", (kind, message)
    assert message.startswith(str(path)), message
    assert re.search(match, message), message
    assert "\n" not in message
    assert seconds < MAX_SECONDS, f"{name} took {seconds:.1f} s"
    assert grown_mb < MAX_GROWTH_MB, f"{name} grew the process by {grown_mb:.0f} MB"


def test_every_case_is_listed(tmp_path) -> None:
    assert sorted(hostile_files(tmp_path)) == sorted(CASE_NAMES)


def test_the_command_line_reports_one_line(outcomes) -> None:
    for name in ("lying-array-length", "missing-tensor"):
        path = outcomes[name][0]
        proc = rwkvkit_cli("convert", str(path), str(path.with_suffix(".safetensors")), "--to", "safetensors",
                           check=False)  # fmt: skip
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"rwkvkit convert: error: {path}"), proc.stderr


def test_a_hostile_gguf_as_tokenizer_is_one_line(outcomes, small_pth) -> None:
    """``--tokenizer FILE.gguf`` reads the file's vocabulary through the same bounded reader."""
    for name in ("truncated-header", "lying-array-length", "text-where-a-size-belongs"):
        path = outcomes[name][0]
        proc = rwkvkit_cli("generate", "--model", str(small_pth), "--tokenizer", str(path), "--prompt", "hi",
                           "--max-tokens", "2", check=False)  # fmt: skip
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"rwkvkit generate: error: {path}"), lines[0]
