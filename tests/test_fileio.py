"""fileio: atomic writes (the umask's mode, nothing created on the way, the old file kept on a
failed write, no temp file left), and reading what users hand us (regular files, UTF-8, JSON of
bounded size and nesting, JSONL with line numbers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rwkvkit.errors import FileAccessError, RwkvkitError
from rwkvkit.fileio import (
    atomic_path,
    atomic_write_bytes,
    check_regular_file,
    check_utf8,
    check_writable,
    iter_jsonl,
    parse_json,
    read_json,
    remove_temp_files,
)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_get_the_umask_mode(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(FileAccessError, match="no space left"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_nothing_is_created_on_the_way(tmp_path: Path) -> None:
    with pytest.raises(FileAccessError, match="does not exist"):
        atomic_write_bytes(tmp_path / "new" / "f", b"x")
    assert not (tmp_path / "new").exists()
    with pytest.raises(FileAccessError, match="is a directory"):
        check_writable(tmp_path)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileAccessError, match="not a directory"):
        check_writable(tmp_path / "file" / "x")


def test_remove_temp_files(tmp_path: Path) -> None:
    (tmp_path / ".a.pth.1234abcd.tmp").write_bytes(b"")
    (tmp_path / "keep.tmp").write_bytes(b"")  # not ours: no leading dot
    assert [p.name for p in remove_temp_files(tmp_path)] == [".a.pth.1234abcd.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tmp"]


def test_regular_files_only(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FileAccessError, match="not a regular file"):
        check_regular_file(tmp_path / "fifo")  # opening it would block forever
    with pytest.raises(FileAccessError, match="is a directory"):
        check_regular_file(tmp_path)
    with pytest.raises(FileAccessError, match="no such file"):
        check_regular_file(tmp_path / "none")


def test_json_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(RwkvkitError, match="nested too deeply"):
        parse_json("[" * 100_000 + "]" * 100_000, "x")
    f = tmp_path / "c.json"
    f.write_text("[1]")
    with pytest.raises(FileAccessError, match="expected a JSON object, got array"):
        read_json(f)
    f.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(FileAccessError, match="not valid UTF-8"):
        read_json(f)
    os.truncate(f, 1 << 30)  # sparse: costs no disk
    with pytest.raises(FileAccessError, match="larger than"):
        read_json(f)


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"text": "a"}\n\n{"text": "\xe9"}\n')
    with pytest.raises(RwkvkitError, match=r"a.jsonl:3: not valid UTF-8 \(byte 0xe9"):
        list(iter_jsonl(f))
    f.write_text('{"text": "a"}\n[1]\n')
    with pytest.raises(RwkvkitError, match=r"a\.jsonl:2: expected a JSON object, got array"):
        list(iter_jsonl(f))


def test_lone_surrogates_are_refused_with_the_byte() -> None:
    assert check_utf8("ok é", "--prompt") == "ok é"
    with pytest.raises(RwkvkitError, match=r"--prompt is not valid UTF-8 text \(byte 0xff at character 2\)"):
        check_utf8("ab\udcff", "--prompt")
