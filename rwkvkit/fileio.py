"""Files: atomic writes (a reader, or a crash, sees the old file or the new one, never half of
one), reading what users hand us (regular files only, UTF-8 checked, JSON with bounded size and
nesting) and JSONL read line by line; every failure is an error naming the file and the problem."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import CheckpointError, FileAccessError, RwkvkitError

# A JSON file we read for settings (config.json, a run file, a manifest, metadata) is small; one
# larger than this is not what it claims to be, and is refused before it is read into memory.
MAX_JSON_BYTES = 64 << 20
TEMP_SUFFIX = ".tmp"


def os_problem(e: OSError) -> str:
    """An OSError as the words a user needs: 'permission denied', 'file name too long', ..."""
    if e.errno == errno.ENAMETOOLONG:
        return "the file name is too long"
    if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return f"{(e.strerror or str(e)).lower()}: the disk (or a file size limit) is full"
    return (e.strerror or str(e)).lower()


# ---------------------------------------------------------------- writing


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Refuse, before any work, an output path that cannot be written: a folder, a missing or
    unwritable parent folder. Cheap; the write itself still reports what only it can find out."""
    path = Path(path)
    try:
        if path.is_dir():
            raise FileAccessError(path, f"is a directory; the {what} must be a file path")
        parent = path.parent
        if not parent.exists():
            raise FileAccessError(path, f"the folder {parent} does not exist (create it first)")
        if not parent.is_dir():
            raise FileAccessError(path, f"{parent} is not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise FileAccessError(path, f"permission denied: cannot create files in {parent}")
    except OSError as e:
        raise FileAccessError(path, os_problem(e)) from None
    return path


def _write_errors() -> tuple[type[BaseException], ...]:
    # torch.save reports a failed write as a RuntimeError, safetensors as its own error type.
    from safetensors import SafetensorError

    return (OSError, RuntimeError, SafetensorError)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    The folder must exist (nothing is created on the way). The temporary file is created with
    the mode the umask gives a new file, so the result has the permissions any new file would.
    A write that fails (disk full, permission denied, ...) raises :class:`FileAccessError` and
    leaves ``path`` as it was.
    """
    path = check_writable(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise FileAccessError(path, f"cannot create a file beside it: {os_problem(e)}") from None
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except RwkvkitError:
            raise
        except _write_errors() as e:
            problem = os_problem(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            raise FileAccessError(
                path, f"writing failed ({problem}); the previous file, if any, is untouched"
            ) from e
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result into place atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def write_json(path: str | Path, obj: Any, *, indent: int = 2) -> None:
    """``obj`` as indented JSON with a final newline, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


def remove_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed half-way left in ``directory``; return them."""
    removed = []
    for p in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- reading


def check_regular_file(
    path: str | Path, error: type[RwkvkitError] = FileAccessError, what: str = "file"
) -> Path:
    """``path`` if it is a regular file; a FIFO or device would block or never end, a folder is no file."""
    path = Path(path)
    try:
        if not path.exists():
            raise _error(error, path, f"no such {what}")
        if path.is_dir():
            raise _error(error, path, f"is a directory, not a {what}")
        if not path.is_file():
            raise _error(error, path, f"not a regular file (a pipe or a device?); pass a {what}")
    except OSError as e:
        raise _error(error, path, os_problem(e)) from None
    return path


def _error(error: type[RwkvkitError], where: str | Path, problem: str) -> RwkvkitError:
    """``error`` saying ``where: problem`` (the path-carrying errors take the two apart)."""
    if issubclass(error, (CheckpointError, FileAccessError)):
        return error(where, problem)  # type: ignore[call-arg]
    return error(f"{where}: {problem}")


def read_bytes(
    path: str | Path, error: type[RwkvkitError] = FileAccessError, limit: int | None = None
) -> bytes:
    """A regular file's bytes (at most ``limit``: a longer file is refused unread)."""
    path = check_regular_file(path, error)
    try:
        with open(path, "rb") as f:
            if limit is not None and os.fstat(f.fileno()).st_size > limit:
                raise _error(
                    error, path, f"is larger than {limit >> 20} MB; this is not the file it should be"
                )
            return f.read()
    except OSError as e:
        raise _error(error, path, os_problem(e)) from None


def decode_utf8(data: bytes, where: str | Path, error: type[RwkvkitError] = RwkvkitError) -> str:
    """``data`` as UTF-8, or an error saying where the first invalid byte is."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _error(
            error,
            where,
            f"not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})",
        ) from None


def read_text(path: str | Path, error: type[RwkvkitError] = FileAccessError) -> str:
    """A regular file's UTF-8 text."""
    return decode_utf8(read_bytes(path, error), path, error)


def check_utf8(text: str, what: str, error: type[RwkvkitError] = RwkvkitError) -> str:
    """``text`` if it can be written as UTF-8; refuses lone surrogates, which is what invalid
    UTF-8 bytes in argv or a file name become in Python."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raw = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        raise error(f"{what} is not valid UTF-8 text ({raw} at character {e.start})") from None
    return text


def parse_json(text: str | bytes, where: str | Path, error: type[RwkvkitError] = RwkvkitError) -> Any:
    """JSON, with syntax errors, too-deep nesting and invalid UTF-8 as errors naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _error(error, where, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise _error(error, where, "JSON nested too deeply to be what it should be") from None
    except UnicodeDecodeError as e:
        raise _error(error, where, f"not valid UTF-8 ({e.reason} at offset {e.start})") from None


def read_json(path: str | Path, error: type[RwkvkitError] = FileAccessError, kind: type = dict) -> Any:
    """A small JSON file (a config, a manifest, a run file) holding a ``kind`` (dict by default)."""
    path = Path(path)
    obj = parse_json(decode_utf8(read_bytes(path, error, limit=MAX_JSON_BYTES), path, error), path, error)
    if not isinstance(obj, kind):
        raise _error(error, path, f"expected a JSON {_json_kind(kind)}, got {_json_kind(type(obj))}")
    return obj


def _json_kind(kind: type) -> str:
    return {dict: "object", list: "array", str: "string", type(None): "null", bool: "boolean"}.get(
        kind, "number" if kind in (int, float) else kind.__name__
    )


def iter_jsonl(path: Path, error: type[RwkvkitError] = RwkvkitError) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file; a line that is not UTF-8 or
    not a JSON object raises ``error`` naming the file and the line."""
    path = check_regular_file(path, error)
    try:
        f = open(path, "rb")  # noqa: SIM115 (only the open's own errors are turned into ``error``)
    except OSError as e:
        raise _error(error, path, os_problem(e)) from None
    with f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            line = decode_utf8(raw, where, error)
            if not line.strip():
                continue
            obj = parse_json(line, where, error)
            if not isinstance(obj, dict):
                raise _error(error, where, f"expected a JSON object, got {_json_kind(type(obj))}")
            yield lineno, obj
