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

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import RwkvkitError
from ..fileio import (
    atomic_path,
    check_regular_file,
    iter_jsonl,
    os_problem,
    read_json,
    read_text,
    write_json,
)
from ..tokenizer import load_tokenizer
from .examples import DocumentSampler, Example, encode_example, read_example

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


def iter_records(path: Path, template: Any) -> Iterator[tuple[int, str, Example | None]]:
    """(line, text, example) for each record of a file: one per JSONL line, or the whole file as
    line 1. ``example`` is the chat or prompt/completion example (:mod:`.examples`); None for text."""
    if path.suffix == ".jsonl":
        for n, obj in iter_jsonl(path, DataError):
            try:
                example = read_example(obj, f"{path}:{n}", template)
            except RwkvkitError as e:
                raise DataError(str(e)) from None
            text = obj["text"] if example is None else "".join(t for t, _ in example.pieces)
            yield n, text, example
    else:
        yield 1, read_text(path, DataError), None


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

    Plain text (text files, ``{"text"}`` JSONL, binidx) is one stream: documents joined in order
    (separated by the tokenizer's end-of-text id where it has one), the last ``val_fraction`` of
    the tokens the validation split. Chat and prompt/completion JSONL (:mod:`.examples`) are
    examples: each also gets a loss mask (``{train,val}.mask``, one byte per token) and its start,
    file and line in ``{train,val}.docs``; the last ``val_fraction`` of the examples is the
    validation split. The two kinds are not mixed in one folder.
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
    with tqdm(
        total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=None if progress else True
    ) as bar:
        pieces, masks, docs, n_bytes = _tokenize(files, tok, dtype, bar)  # the bar ends before any error
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    if docs:
        n_val_docs = max(1, round(len(docs) * val_fraction))
        if len(docs) - n_val_docs < 1:
            raise DataError(f"only {len(docs)} example in the inputs: too few to train and validate on")
        split = int(sum(d[2] for d in docs[: len(docs) - n_val_docs]))
    else:
        n_val = max(1, int(len(tokens) * val_fraction))
        if len(tokens) - n_val < 2:
            raise DataError(f"only {len(tokens)} tokens in the inputs: too little to train on")
        split = len(tokens) - n_val
    _write_split_files(out, tokens, split, masks, docs)
    manifest = {
        "format": "rwkvkit-tokens-1",
        "tokenizer": tok.name,
        "vocab_size": vocab,
        "dtype": np.dtype(dtype).name,
        "train_tokens": int(split),
        "val_tokens": int(len(tokens) - split),
        # bytes per token over the whole corpus: turns nats per token into bits per byte
        "bytes_per_token": (n_bytes / len(tokens)) if n_bytes else None,
        "sources": [str(f) for f in files],
    }
    if docs:
        manifest.update(examples=True, train_examples=len(docs) - n_val_docs, val_examples=n_val_docs)
    write_json(out / MANIFEST, manifest)
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


def _tokenize(
    files: list[Path], tok: Any, dtype: Any, bar: Any
) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple[int, int, int]], int]:
    """Every file's tokens (one array per record); for examples also their masks and (file index,
    line, tokens) each; and the bytes of text read."""
    from ..chat import ChatTemplate

    vocab, eos, template = int(tok.vocab_size), getattr(tok, "eos_id", None), ChatTemplate()
    pieces: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    docs: list[tuple[int, int, int]] = []
    n_bytes = 0

    def kind_check(is_example: bool, where: str) -> None:
        if pieces and bool(docs) != is_example:
            raise DataError(
                f"{where}: mixes plain text with chat or prompt/completion examples; prepare each kind "
                "into its own folder"
            )

    for fi, f in enumerate(files):
        if f.suffix in (".idx", ".bin"):
            kind_check(False, str(f))
            ids = read_binidx(f)
            if ids.size and int(ids.max()) >= vocab:
                raise DataError(f"{f}: token id {int(ids.max())} is outside the {tok.name} vocabulary")
            pieces.append(np.asarray(ids, dtype=dtype))
            continue
        for line, text, example in iter_records(f, template):
            where = f"{f}:{line}"
            kind_check(example is not None, where)
            if example is None:
                ids = tok.encode(text)
                if eos is not None:
                    ids.append(eos)
            else:
                ids, mask = encode_example(tok, example)
                if len(ids) < 2:
                    raise DataError(f"{where}: this example is {len(ids)} token long: nothing to predict")
                masks.append(np.asarray(mask, dtype=np.uint8))
                docs.append((fi, line, len(ids)))
            pieces.append(np.asarray(ids, dtype=dtype))
            size = len(text.encode("utf-8"))
            n_bytes += size
            bar.update(size)
    return pieces, masks, docs, n_bytes


def _write_split_files(
    out: Path, tokens: np.ndarray, split: int, masks: list[np.ndarray], docs: list[tuple[int, int, int]]
) -> None:
    """{train,val}.bin, and for examples {train,val}.mask and {train,val}.docs (start, file, line)."""
    arrays = {"bin": tokens}
    if docs:
        arrays["mask"] = np.concatenate(masks)
        lengths = np.array([d[2] for d in docs], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        arrays["docs"] = np.stack([starts, [d[0] for d in docs], [d[1] for d in docs]], 1).astype(np.int64)
    for ext, arr in arrays.items():
        if ext == "docs":
            cut = int(np.searchsorted(arr[:, 0], split))
            parts = (arr[:cut], arr[cut:] - np.array([split, 0, 0]))
        else:
            parts = (arr[:split], arr[split:])
        for name, part in zip(("train", "val"), parts, strict=True):
            with atomic_path(out / f"{name}.{ext}") as tmp:
                np.ascontiguousarray(part).tofile(tmp)


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
    """A prepared data folder, opened. For examples (chat, prompt/completion) also the loss masks
    and where each example starts (:mod:`.examples`)."""

    path: Path
    manifest: dict[str, Any]
    train: np.ndarray
    val: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (tokens,) uint8
    docs: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (examples, 3) int64

    @property
    def examples(self) -> bool:
        return bool(self.manifest.get("examples"))

    @classmethod
    def open(cls, path: str | Path) -> TokenData:
        path = Path(path)
        manifest = read_manifest(path)
        dtype = np.dtype(manifest["dtype"])
        arrays, masks, docs = {}, {}, {}
        for name in ("train", "val"):
            n = manifest[f"{name}_tokens"]
            arrays[name] = _open_array(path / f"{name}.bin", dtype, (n,))
            if manifest.get("examples"):
                masks[name] = _open_array(path / f"{name}.mask", np.dtype(np.uint8), (n,))
                docs[name] = _open_array(
                    path / f"{name}.docs", np.dtype(np.int64), (manifest[f"{name}_examples"], 3)
                )
        return cls(path, manifest, arrays["train"], arrays["val"], masks, docs)

    def example_prompt(self, split: str, i: int) -> list[int]:
        """The tokens of example ``i`` before its first counted one (a chat's first question)."""
        start = int(self.docs[split][i, 0])
        counted = np.flatnonzero(self.masks[split][start:])
        tokens = self.train if split == "train" else self.val
        return [int(t) for t in tokens[start : start + (int(counted[0]) if counted.size else 1)]]

    def sampler(self, split: str, ctx_len: int, seed: int) -> TokenSampler | DocumentSampler:
        """What reads a split's batches: windows of the stream, or whole examples with their masks."""
        tokens = self.train if split == "train" else self.val
        if not self.examples:
            return TokenSampler(tokens, ctx_len, seed)
        return DocumentSampler(
            tokens, self.masks[split], self.docs[split], ctx_len, seed, self.manifest["sources"]
        )


def _open_array(f: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if not f.is_file() or f.stat().st_size != int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"{f}: missing or not the {shape[0]} entries the manifest promises; re-run prepare")
    # an empty split has no bytes to map
    return np.memmap(f, dtype=dtype, mode="r", shape=shape) if shape[0] else np.zeros(shape, dtype)


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
