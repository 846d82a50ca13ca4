"""Checking a ``torch.save`` zip file before ``torch.load(mmap=True)`` trusts it.

``torch.load`` with ``mmap=True`` maps each tensor's bytes straight from the offsets in the zip's
central directory and never looks at the CRC-32 the writer stored: a flipped bit in the data, or in
an offset, loads wrong numbers without a word. This reads every entry once, through the same
mapping, and compares: the local header must be where the directory says and name the same entry,
and the bytes must have the stored CRC-32. Entries are stored uncompressed (torch writes them so),
which is what lets the data be checked in place, without a copy.
"""

from __future__ import annotations

import mmap
import struct
import zipfile
import zlib
from pathlib import Path

from ..errors import CheckpointError

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # signature ... name length, extra length (30 bytes)
_LOCAL_MAGIC = b"PK\x03\x04"
_BLOCK = 64 << 20  # CRC in pieces, so no piece of the mapping is copied whole


def verify_zip(path: str | Path) -> None:
    """Raise :class:`CheckpointError` unless every entry of the zip at ``path`` is intact."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z, open(path, "rb") as f:
            infos = z.infolist()
            size = f.seek(0, 2)
            if size == 0:
                return
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                for info in infos:
                    _verify_entry(path, m, size, info)
    except zipfile.BadZipFile as e:
        raise CheckpointError(
            path, f"not a readable zip file; it is probably truncated or corrupt ({e})"
        ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(path, f"cannot read this PyTorch file ({e})") from None


def _verify_entry(path: Path, m: mmap.mmap, size: int, info: zipfile.ZipInfo) -> None:
    where = f"zip entry {info.filename!r}"
    start = info.header_offset
    if start + _LOCAL_HEADER.size > size:
        raise CheckpointError(path, f"{where} starts past the end of the file: truncated or corrupt")
    head = _LOCAL_HEADER.unpack_from(m, start)
    magic, name_len, extra_len = head[0], head[9], head[10]
    name_at = start + _LOCAL_HEADER.size
    if magic != _LOCAL_MAGIC or m[name_at : name_at + name_len] != info.orig_filename.encode("utf-8"):
        raise CheckpointError(
            path, f"{where}: the zip directory points at the wrong place (a corrupt offset); refusing to load"
        )
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(path, f"{where} is compressed; torch.save files store entries uncompressed")
    data = name_at + name_len + extra_len
    if data + info.file_size > size:
        raise CheckpointError(path, f"{where} runs past the end of the file: truncated")
    crc = 0
    view = memoryview(m)
    try:
        for at in range(data, data + info.file_size, _BLOCK):
            crc = zlib.crc32(view[at : min(at + _BLOCK, data + info.file_size)], crc)
    finally:
        view.release()
    if crc != info.CRC:
        raise CheckpointError(
            path,
            f"{where} fails its CRC-32 check (stored {info.CRC:08x}, computed {crc:08x}): the file is "
            "corrupt; download or copy it again",
        )
