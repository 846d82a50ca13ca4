"""The .pth zip check: torch.load(mmap=True) ignores the CRC-32s, verify_zip does not."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import torch

import rwkvkit
from rwkvkit.errors import CheckpointError
from rwkvkit.formats.torchzip import verify_zip


@pytest.fixture
def pth(tmp_path: Path) -> Path:
    path = tmp_path / "t.pth"
    torch.save({"a": torch.arange(64, dtype=torch.float32), "b": torch.ones(8)}, path)
    return path


def entry(path: Path, name_part: str) -> zipfile.ZipInfo:
    with zipfile.ZipFile(path) as z:
        return next(i for i in z.infolist() if name_part in i.filename)


def test_an_intact_file_passes(pth: Path) -> None:
    verify_zip(pth)


def test_a_flipped_data_bit_fails_its_crc(pth: Path) -> None:
    info = entry(pth, "/data/0")
    raw = bytearray(pth.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + 3] ^= 0x01
    pth.write_bytes(bytes(raw))
    loaded = torch.load(pth, mmap=True, weights_only=True)  # what the loader used to trust
    assert not torch.equal(loaded["a"], torch.arange(64, dtype=torch.float32))
    with pytest.raises(CheckpointError, match="fails its CRC-32 check"):
        verify_zip(pth)


def test_a_directory_offset_pointing_elsewhere_is_refused(pth: Path) -> None:
    target, other = entry(pth, "/data/0"), entry(pth, "/data/1")
    raw = bytearray(pth.read_bytes())
    at = raw.index(b"PK\x01\x02")  # the central directory's first record; walk to the target's
    name = target.orig_filename.encode()
    while raw[at + 46 : at + 46 + len(name)] != name:
        at = raw.index(b"PK\x01\x02", at + 4)
    raw[at + 42 : at + 46] = struct.pack("<I", other.header_offset)
    pth.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="points at the wrong place"):
        verify_zip(pth)


def test_load_model_checks_the_crc(tmp_path: Path) -> None:
    from cli_run import save_tiny_model

    path = save_tiny_model(tmp_path / "m.pth")
    info = entry(path, "/data/0")
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="CRC-32"):
        rwkvkit.load_model(path)
