"""Token files for training: text and JSONL in order, binidx in and out, bad inputs named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from train_runs import TEXT

from rwkvkit.train.data import DataError, TokenData, prepare, read_binidx, write_binidx


def test_prepare_text_jsonl_and_manifest(data_dir: Path) -> None:
    d = TokenData.open(data_dir)
    m = d.manifest
    assert m["tokenizer"] == "byte" and m["dtype"] == "uint8" and m["vocab_size"] == 256
    assert len(d.train) == m["train_tokens"] and len(d.val) == m["val_tokens"]
    assert abs(m["val_tokens"] / (m["train_tokens"] + m["val_tokens"]) - 0.2) < 0.01
    ids = np.concatenate([d.train, d.val])
    assert bytes(ids[: len(TEXT)].astype(np.uint8)) == TEXT.encode()  # text first, in order


def test_binidx_roundtrip_and_prepare(tmp_path: Path) -> None:
    docs = [[1, 2, 3, 300], [7] * 50, list(range(100))]
    flat = [t for d in docs for t in d]
    write_binidx(tmp_path / "ds", docs)
    assert read_binidx(tmp_path / "ds.bin").tolist() == flat
    m = prepare(
        [str(tmp_path / "ds.idx")], tmp_path / "out", tokenizer="world", val_fraction=0.1, progress=False
    )
    d = TokenData.open(tmp_path / "out")
    assert np.concatenate([d.train, d.val]).tolist() == flat
    assert m["train_tokens"] + m["val_tokens"] == 154


def test_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*text"):
        prepare([str(tmp_path / "bad.jsonl")], tmp_path / "o", progress=False)
    (tmp_path / "x.idx").write_bytes(b"NOTMAGIC" * 8)
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(DataError, match="binidx"):
        read_binidx(tmp_path / "x.idx")
    with pytest.raises(DataError, match="rwkvkit prepare"):
        TokenData.open(tmp_path)


def test_byte_tokens_are_uint8_and_old_uint16_folders_still_read(tmp_path: Path) -> None:
    import json

    (tmp_path / "a.txt").write_text(TEXT)
    m = prepare([str(tmp_path / "a.txt")], tmp_path / "new", "byte", 0.1, progress=False)
    assert m["dtype"] == "uint8" and (tmp_path / "new" / "train.bin").stat().st_size == m["train_tokens"]
    old = tmp_path / "old"  # as prepare wrote byte tokens before: uint16
    old.mkdir()
    new = TokenData.open(tmp_path / "new")
    for name in ("train", "val"):
        np.asarray(getattr(new, name), dtype=np.uint16).tofile(old / f"{name}.bin")
    (old / "manifest.json").write_text(json.dumps({**m, "dtype": "uint16"}))
    data = TokenData.open(old)
    assert np.array_equal(data.train, new.train) and data.train.dtype == np.uint16
