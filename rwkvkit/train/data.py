"""Token files for training: text/JSONL/binidx in, memory-mapped token arrays out.

A prepared data folder holds ``train.bin`` and ``val.bin`` (raw little-endian token ids in the
smallest unsigned type the vocabulary fits: uint8 for bytes, uint16, else uint32; folders written
before uint8 was used hold uint16 and read as well) and ``manifest.json`` saying what they are. Training reads
them with ``numpy.memmap``, so a corpus larger than memory costs nothing to open.

Batches are drawn by :class:`TokenSampler` from a seeded generator keyed by the step number: the
"data position" of a run is its step, so resuming needs nothing but the step, and every rank of a
distributed run can compute the same global batch and read only its own rows.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import RwkvkitError
from ..fileio import (
    atomic_path,
    atomic_write_bytes,
    check_regular_file,
    iter_jsonl,
    os_problem,
    read_json,
    read_text,
)
from ..tokenizer import load_tokenizer

MANIFEST = "manifest.json"
TOKEN_DTYPES = ("uint8", "uint16", "uint32")  # what a manifest's "dtype" may say

# Megatron / RWKV-LM binidx: the .idx header's dtype codes.
BINIDX_MAGIC = b"MMIDIDX\x00\x00"
BINIDX_DTYPES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}


class DataError(RwkvkitError):
    """Training data cannot be read or prepared."""


# ---------------------------------------------------------------- reading inputs


def read_binidx(path: str | Path) -> np.ndarray:
    """All tokens of a Megatron/RWKV-LM binidx dataset (``X.bin`` + ``X.idx``), as one memmap."""
    base = Path(path)
    if base.suffix in (".bin", ".idx"):
        base = base.with_suffix("")
    idx, bin_ = base.with_suffix(".idx"), base.with_suffix(".bin")
    if not idx.is_file() or not bin_.is_file():
        raise DataError(f"{base}: a binidx dataset needs both {idx.name} and {bin_.name}")
    with open(idx, "rb") as f:
        head = f.read(9 + 8 + 1 + 8 + 8)
    if len(head) < 34 or head[:9] != BINIDX_MAGIC:
        raise DataError(f"{idx}: not a Megatron binidx index (wrong magic or truncated)")
    version, code = struct.unpack("<QB", head[9:18])
    if version != 1 or code not in BINIDX_DTYPES:
        raise DataError(f"{idx}: unsupported binidx version {version} or dtype code {code}")
    dtype = np.dtype(BINIDX_DTYPES[code])
    if np.issubdtype(dtype, np.floating):
        raise DataError(f"{idx}: dtype {dtype} holds no token ids")
    n_seq, _n_doc = struct.unpack("<QQ", head[18:34])
    sizes = np.memmap(idx, dtype=np.int32, mode="r", offset=34, shape=(n_seq,))
    total = int(sizes.astype(np.int64).sum()) if n_seq else 0
    if bin_.stat().st_size < total * dtype.itemsize:
        raise DataError(f"{bin_}: shorter than its index says ({total} tokens of {dtype})")
    return np.memmap(bin_, dtype=dtype, mode="r", shape=(total,))


def write_binidx(path: str | Path, docs: list[list[int]], dtype: Any = np.uint16) -> None:
    """Write a binidx dataset (the format RWKV-LM's trainer reads); used by tests and conversions."""
    base = Path(path)
    code = {np.dtype(v): k for k, v in BINIDX_DTYPES.items()}[np.dtype(dtype)]
    arrays = [np.asarray(d, dtype=dtype) for d in docs]
    base.with_suffix(".bin").write_bytes(b"".join(a.tobytes() for a in arrays))
    sizes = np.array([len(a) for a in arrays], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes[:-1].astype(np.int64))]) * np.dtype(dtype).itemsize
    doc_idx = np.arange(len(arrays) + 1, dtype=np.int64)
    header = BINIDX_MAGIC + struct.pack("<QB", 1, code) + struct.pack("<QQ", len(arrays), len(doc_idx))
    body = sizes.tobytes() + pointers.astype(np.int64).tobytes() + doc_idx.tobytes()
    base.with_suffix(".idx").write_bytes(header + body)


def iter_documents(path: Path) -> Iterator[str]:
    """The texts in a file: one per JSONL line (its "text" field), or the whole file."""
    if path.suffix == ".jsonl":
        for n, obj in iter_jsonl(path, DataError):
            if not isinstance(obj.get("text"), str):
                raise DataError(f'{path}:{n}: each JSONL line needs a string "text" field')
            yield obj["text"]
    else:
        yield read_text(path, DataError)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files named directly, plus the .txt/.jsonl/.idx files inside named folders (sorted)."""
    out: list[Path] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix in (".txt", ".jsonl", ".idx"))
            if not found:
                raise DataError(f"{p}: no .txt, .jsonl or .idx files in this folder")
            out.extend(found)
        elif p.with_suffix(".idx").is_file() and p.suffix in (".bin", ".idx", ""):
            out.append(p.with_suffix(".idx"))  # a binidx dataset, named by either file or its stem
        elif p.exists():
            out.append(check_regular_file(p, DataError, "text, .jsonl or binidx file"))
        else:
            raise DataError(f"{p}: no such file or folder")
    return out


# ---------------------------------------------------------------- prepare


def prepare(
    inputs: list[str],
    out: str | Path,
    tokenizer: str = "byte",
    val_fraction: float = 0.05,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize the inputs into ``out/{train,val}.bin`` + ``manifest.json``; return the manifest.

    Documents are joined in order (separated by the tokenizer's end-of-text id where it has one);
    the last ``val_fraction`` of the tokens is the validation split.
    """
    from tqdm import tqdm

    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    tok = load_tokenizer(tokenizer)
    vocab = int(tok.vocab_size)
    dtype = token_dtype(vocab)
    files = expand_inputs(inputs)
    total_bytes = sum(f.stat().st_size for f in files if f.suffix != ".idx")
    out = make_folder(out, "--out")
    eos = getattr(tok, "eos_id", None)
    pieces: list[np.ndarray] = []
    n_bytes = 0
    # disable=None: a bar only on a terminal, never in a log file or a pipe
    bar = tqdm(
        total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=None if progress else True
    )
    for f in files:
        if f.suffix in (".idx", ".bin"):
            ids = read_binidx(f)
            if ids.size and int(ids.max()) >= vocab:
                raise DataError(f"{f}: token id {int(ids.max())} is outside the {tok.name} vocabulary")
            pieces.append(np.asarray(ids, dtype=dtype))
            continue
        for text in iter_documents(f):
            ids = tok.encode(text)
            if eos is not None:
                ids.append(eos)
            pieces.append(np.asarray(ids, dtype=dtype))
            size = len(text.encode("utf-8"))
            n_bytes += size
            bar.update(size)
    bar.close()
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    n_val = max(1, int(len(tokens) * val_fraction))
    if len(tokens) - n_val < 2:
        raise DataError(f"only {len(tokens)} tokens in the inputs: too little to train on")
    split = len(tokens) - n_val
    for name, arr in (("train", tokens[:split]), ("val", tokens[split:])):
        with atomic_path(out / f"{name}.bin") as tmp:
            arr.tofile(tmp)
    manifest = {
        "format": "rwkvkit-tokens-1",
        "tokenizer": tok.name,
        "vocab_size": vocab,
        "dtype": np.dtype(dtype).name,
        "train_tokens": int(split),
        "val_tokens": int(n_val),
        # bytes per token over the whole corpus: turns nats per token into bits per byte
        "bytes_per_token": (n_bytes / len(tokens)) if n_bytes else None,
        "sources": [str(f) for f in files],
    }
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def token_dtype(vocab_size: int) -> type:
    """The smallest unsigned integer type that holds every id of a vocabulary."""
    return np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32


def make_folder(path: str | Path, flag: str) -> Path:
    """An output folder, created (with its parents) if needed; a file in its place is refused."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise DataError(f"{flag} {path}: is a file, not a folder")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot create the folder: {os_problem(e)}") from None
    return path


# ---------------------------------------------------------------- reading prepared data


def read_manifest(path: Path) -> dict[str, Any]:
    """A data folder's manifest, its fields checked: what later code takes for granted."""
    file = path / MANIFEST
    if not file.exists():
        raise DataError(
            f"{path}: no {MANIFEST}; make the folder with `rwkvkit prepare INPUT... --out {path}`"
        )
    m = read_json(file, DataError)

    def bad(key: str, rule: str) -> DataError:
        return DataError(f"{file}: {key!r} must be {rule}, got {m.get(key)!r}; re-run prepare")

    if m.get("dtype") not in TOKEN_DTYPES:
        raise bad("dtype", f"one of {', '.join(TOKEN_DTYPES)}")
    for key, least in (("train_tokens", 0), ("val_tokens", 0), ("vocab_size", 1)):
        if not isinstance(m.get(key), int) or isinstance(m.get(key), bool) or m[key] < least:
            raise bad(key, f"an integer >= {least}")
    if m["vocab_size"] > np.iinfo(m["dtype"]).max + 1:
        raise bad("vocab_size", f"at most {np.iinfo(m['dtype']).max + 1} for {m['dtype']} tokens")
    if not isinstance(m.get("tokenizer"), str):
        raise bad("tokenizer", "a tokenizer name")
    bpt = m.get("bytes_per_token")
    if bpt is not None and (not isinstance(bpt, (int, float)) or isinstance(bpt, bool) or not 0 < bpt < 1e6):
        raise bad("bytes_per_token", "a positive number or null")
    return m


@dataclass
class TokenData:
    """A prepared data folder, opened."""

    path: Path
    manifest: dict[str, Any]
    train: np.ndarray
    val: np.ndarray

    @classmethod
    def open(cls, path: str | Path) -> TokenData:
        path = Path(path)
        manifest = read_manifest(path)
        dtype = np.dtype(manifest["dtype"])
        arrays = {}
        for name in ("train", "val"):
            f = path / f"{name}.bin"
            n = manifest[f"{name}_tokens"]
            if not f.is_file() or f.stat().st_size != n * dtype.itemsize:
                raise DataError(f"{f}: missing or not the {n} tokens the manifest promises; re-run prepare")
            arrays[name] = np.memmap(f, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
        return cls(path, manifest, arrays["train"], arrays["val"])


class TokenSampler:
    """Random windows of ``ctx_len + 1`` tokens; the batch for a step depends only on (seed, step)."""

    def __init__(self, tokens: np.ndarray, ctx_len: int, seed: int) -> None:
        if len(tokens) < ctx_len + 2:
            raise DataError(f"the data has {len(tokens)} tokens, fewer than --ctx-len + 2 = {ctx_len + 2}")
        self.tokens, self.ctx_len, self.seed = tokens, ctx_len, seed

    def global_batch(self, step: int, size: int) -> np.ndarray:
        """The start offsets of the whole (all ranks, all micro-batches) batch of a step."""
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.tokens) - self.ctx_len - 1, size=size)

    def read(self, offsets: np.ndarray) -> tuple[Tensor, Tensor]:
        """Inputs and targets (B, ctx_len) int64 for the given offsets."""
        rows = np.stack([np.asarray(self.tokens[o : o + self.ctx_len + 1], dtype=np.int64) for o in offsets])
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]


def eval_windows(tokens: np.ndarray, ctx_len: int, max_windows: int) -> np.ndarray:
    """Evenly spaced, non-overlapping windows over the validation split (the same every eval)."""
    n = (len(tokens) - 1) // ctx_len
    if n < 1:
        raise DataError(f"the validation split has {len(tokens)} tokens, fewer than --ctx-len + 1")
    picks = np.linspace(0, n - 1, num=min(n, max_windows)).round().astype(np.int64)
    return picks * ctx_len
