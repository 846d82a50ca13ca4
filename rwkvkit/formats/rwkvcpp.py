"""rwkv.cpp ("ggml") checkpoint files: read (with dequantization) and write, in BlinkDL terms.

An rwkv.cpp file is a 24-byte header followed by tensors until end of file (rwkv.cpp's
``docs/FILE_FORMAT.md``)::

    header : int32 magic 0x67676d66, file_version (100|101), n_vocab, n_embed, n_layer, data_type
    tensor : int32 dim_count, key_length, data_type; int32[dim_count] shape (ggml order, innermost
             first, i.e. the PyTorch shape reversed); key_length bytes of UTF-8 key; data

rwkv.cpp's converter (``python/convert_pytorch_to_ggml.py``) does not store the BlinkDL tensors
as they are: it squeezes ``time_*`` tensors, pre-computes decays, transposes some low-rank
matrices and (v7) concatenates the six token-shift vectors. This module keeps those rules in
two pure functions, :func:`from_rwkvcpp_layout` and :func:`to_rwkvcpp_layout`, so the readers
and the writer are plain byte handling around them and the layouts can be tested on their own.

Everything here is little-endian ("machine byte order" in the spec; every machine rwkv.cpp
targets is little-endian).
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError, UnsupportedVersionError
from ..fileio import atomic_path
from ..models import detect_version

MAGIC = 0x67676D66  # "ggmf"
FILE_VERSION_0 = 100  # original; its quantized block layouts predate ggml 00b49ec and are not readable
FILE_VERSION_1 = 101  # 2023-05-27 onwards; what the current converter and quantizer write
FILE_VERSIONS = (FILE_VERSION_0, FILE_VERSION_1)

_HEADER = struct.Struct("<6i")  # magic, version, n_vocab, n_embed, n_layer, data_type
_TENSOR_HEADER = struct.Struct("<3i")  # dim_count, key_length, data_type

# rwkv.cpp data type ids (rwkv_file_format.inc); 4-6 were formats rwkv.cpp itself removed.
FP32, FP16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 7, 8, 9
DATA_TYPE_NAMES: dict[int, str] = {
    FP32: "FP32",
    FP16: "FP16",
    Q4_0: "Q4_0",
    Q4_1: "Q4_1",
    4: "Q4_1_O",
    5: "Q4_2",
    6: "Q4_3",
    Q5_0: "Q5_0",
    Q5_1: "Q5_1",
    Q8_0: "Q8_0",
}
_REMOVED_TYPES = (4, 5, 6)
_QUANTIZED = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
QK = 32  # values per quantization block, for every type here
# Bytes per block of 32 values, ggml layouts since 2023-05 (fp16 scales): see _dequantize.
_BLOCK_BYTES = {Q4_0: 18, Q4_1: 20, Q5_0: 22, Q5_1: 24, Q8_0: 34}

MAX_DIMS = 3  # rwkv.cpp accepts 1 to 3 dimensions
MAX_KEY_LENGTH = 1024  # real keys are < 64 bytes; anything longer is a corrupt length field

VERSIONS = ("4", "5.1", "5.2", "6", "7")
_V7_SHIFT_NAMES = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")  # order inside att.x_rwkvag
_V7_LOW_RANK = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")  # stored transposed
_V7_VECTORS = ("w0", "a0", "v0", "k_k", "k_a")  # (1, 1, C) in BlinkDL files; kept 3-D by the converter
# Substrings that keep a >1-D tensor FP32 in an FP16 file (the converter's own list).
_FP16_KEEP_FP32 = (".time_", ".k_k", ".k_a", ".r_k", ".x_rwkvag", ".x_k", ".w0", ".a0", ".v0")
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
# (version, name in a block) -> dimensions the converter stores, for the tensors we transpose or split.
_STORED_DIMS = {
    **{("7", f"att.{n}"): 2 for n in _V7_LOW_RANK},
    ("7", "att.x_rwkvag"): 3,
    ("6", "att.time_maa_w1"): 2,
    ("6", "att.time_decay_w1"): 2,
    ("6", "att.time_decay_w2"): 2,
    ("6", "att.time_maa_w2"): 3,
}


@dataclass(frozen=True)
class RwkvCppHeader:
    """The six-int header minus the magic. ``data_type`` is the file's main type, as rwkv.cpp sets it
    (FP32/FP16 from the converter, the quantized type from the quantizer); tensors carry their own."""

    file_version: int  # 100 or 101
    n_vocab: int
    n_embed: int
    n_layer: int
    data_type: int

    @property
    def data_type_name(self) -> str:
        return DATA_TYPE_NAMES.get(self.data_type, f"unknown({self.data_type})")


# --- version detection ---------------------------------------------------------------------


def rwkvcpp_version(keys: Iterable[str], *, path: str | Path | None = None) -> str:
    """The RWKV version of a state dict in rwkv.cpp's naming, from :func:`rwkvkit.models.detect_version`.

    Works on both rwkv.cpp keys and BlinkDL keys. rwkv.cpp names RWKV-5 by its own sub-versions,
    which differ from the official ``rwkv`` package's: ``"5.1"`` means "``att.ln_x`` but no
    ``att.gate``", which the official package calls 5.0; ``"5.2"`` means "``att.ln_x`` and
    ``att.gate``" (official 5.1 and 5.2 both fall here; rwkv.cpp's converter cannot tell them apart
    either). Returns one of ``"4"``, ``"5.1"``, ``"5.2"``, ``"6"``, ``"7"``.
    """
    keys = list(keys)
    try:
        version = detect_version(keys)
    except UnsupportedVersionError as e:
        raise UnsupportedVersionError(path, e.problem) from None
    if version == "5":
        return "5.2" if any(_suffix(k) == "att.gate.weight" for k in keys) else "5.1"
    return _check_version(version, path)


def _check_version(version: str, path: str | Path | None) -> str:
    if version not in VERSIONS:
        raise CheckpointError(
            path, f"unknown RWKV version {version!r}; expected one of {', '.join(VERSIONS)}"
        )
    return version


# --- layout transforms: pure functions on state dicts --------------------------------------


def _suffix(key: str) -> str:
    """``blocks.3.att.time_decay`` -> ``att.time_decay``; top-level keys unchanged."""
    m = _LAYER_RE.match(key)
    return m.group(2) if m else key


def _heads_first(t: Tensor) -> Tensor:
    """A stored (H, N, 1) per-head tensor back to BlinkDL's (H, N). The converter squeezes before it
    adds the trailing 1, so a one-head model arrives as (N, 1): that is (1, N)."""
    if t.dim() == 3:
        return t.reshape(t.shape[0], t.shape[1])
    return t.reshape(1, -1)


def from_rwkvcpp_layout(
    tensors: Mapping[str, Tensor], version: str, *, path: str | Path | None = None
) -> dict[str, Tensor]:
    """Undo the converter's transforms: rwkv.cpp tensors (PyTorch-ordered shapes) -> BlinkDL tensors.

    Decays are inverted in float64 so the only loss is what the file format itself lost. Key order
    is kept (v7's ``att.x_rwkvag`` expands in place into its six vectors), which lets the writer
    reproduce the converter's byte order.
    """
    _check_version(version, path)
    out: dict[str, Tensor] = {}
    for key, stored in tensors.items():
        t = stored.float()
        name = _suffix(key)
        leaf = name.rsplit(".", 1)[-1]
        want = _STORED_DIMS.get((version, name))
        if want is not None and t.dim() != want:
            raise CheckpointError(
                path, f"{key} has shape {tuple(t.shape)}; a v{version} file stores it {want}-D"
            )
        if version == "7":
            if name == "att.x_rwkvag":
                if t.shape[0] != len(_V7_SHIFT_NAMES):  # (6, 1, C)
                    raise CheckpointError(path, f"{key} has shape {tuple(t.shape)}; expected (6, 1, C)")
                prefix = key[: -len("x_rwkvag")]
                for i, shift in enumerate(_V7_SHIFT_NAMES):
                    out[prefix + shift] = t[i].reshape(1, 1, -1).clone()  # (1, 1, C)
                continue
            if leaf in _V7_LOW_RANK and name.startswith("att."):
                t = t.t().contiguous()  # stored (out, in) for ggml's matmul -> BlinkDL (C, D) / (D, C)
        elif ".time_" in key:
            t = _time_from_rwkvcpp(leaf, t, version)
        out[key] = t
    return out


def _time_from_rwkvcpp(leaf: str, t: Tensor, version: str) -> Tensor:
    """One ``time_*`` tensor of a v4-v6 file back to its BlinkDL value and shape."""
    if leaf.startswith(("time_mix_", "time_maa_")) and leaf not in ("time_maa_w1", "time_maa_w2"):
        return t.reshape(1, 1, -1)  # (C,) -> (1, 1, C)
    if version == "4":
        if leaf == "time_decay":
            return torch.log(-t.double()).float()  # stored -exp(w); (C,)
        return t  # time_first: (C,)
    if version in ("5.1", "5.2"):
        if leaf == "time_decay":
            t = torch.log(-torch.log(t.double())).float()  # stored exp(-exp(w))
            return t.reshape(-1) if version == "5.1" else _heads_first(t)  # (H,) / (H, N)
        if leaf == "time_first":
            return torch.log(t.double()).float().reshape(-1)  # stored exp(u) as (H, 1, 1) -> (H,)
        if leaf == "time_faaaa":
            return _heads_first(t)  # (H, N)
        return t
    # v6
    if leaf in ("time_maa_w1", "time_decay_w1", "time_decay_w2"):
        return t.t().contiguous()  # (5D, C) -> (C, 5D); (D, C) -> (C, D); (C, D) -> (D, C)
    if leaf == "time_maa_w2":
        return t.transpose(1, 2).contiguous()  # (5, C, D) -> (5, D, C)
    if leaf == "time_decay":
        return t.reshape(1, 1, -1)  # (H, N, 1) -> (1, 1, C)
    if leaf == "time_faaaa":
        return _heads_first(t)  # (H, N)
    return t


def to_rwkvcpp_layout(
    state_dict: Mapping[str, Tensor], version: str, *, path: str | Path | None = None
) -> dict[str, Tensor]:
    """Apply rwkv.cpp's converter transforms: BlinkDL tensors -> tensors as the converter stores them.

    Follows ``convert_pytorch_to_ggml.py`` step by step (``.float()``, squeeze of ``.time_*``, the
    per-version transforms, all in float32 as it does them), so that FP32 output matches it bit for
    bit. Inputs may be any float dtype and either BlinkDL shape of a vector ((1, 1, C) or (C,));
    they are first brought to the BlinkDL shapes the converter expects.
    """
    _check_version(version, path)
    sd = _blinkdl_shapes(state_dict, version, path)
    if version == "7":
        sd = _concat_v7_shifts(sd, path)
    n_head = sd["blocks.0.att.time_faaaa"].shape[0] if version == "6" else 0
    out: dict[str, Tensor] = {}
    for key, src in sd.items():
        t = src.float()
        if ".time_" in key:
            t = t.squeeze()  # (1, 1, C) -> (C,)
        leaf = key.rsplit(".", 1)[-1]
        if version == "7":
            if leaf in _V7_LOW_RANK and _suffix(key).startswith("att."):
                t = t.transpose(0, 1)
        elif version == "6":
            if leaf == "time_faaaa":
                t = t.unsqueeze(-1)  # (H, N, 1)
            if leaf in ("time_maa_w1", "time_decay_w1", "time_decay_w2"):
                t = t.transpose(0, 1)
            if leaf == "time_maa_w2":
                t = t.transpose(1, 2)  # (5, D, C) -> (5, C, D)
            if leaf == "time_decay":
                t = t.reshape(n_head, -1, 1)  # (H, N, 1)
        elif version in ("5.1", "5.2"):
            if leaf == "time_decay":
                t = torch.exp(-torch.exp(t))
                t = t.unsqueeze(-1) if version == "5.2" else t.reshape(-1, 1, 1)
            if leaf == "time_first":
                t = torch.exp(t).reshape(-1, 1, 1)
            if leaf == "time_faaaa":
                t = t.unsqueeze(-1)
        elif leaf == "time_decay":
            t = -torch.exp(t)
        out[key] = t.contiguous()
    return out


def _blinkdl_shapes(
    state_dict: Mapping[str, Tensor], version: str, path: str | Path | None
) -> dict[str, Tensor]:
    """Give the tensors whose stored shape depends on it their BlinkDL shape.

    Only tensors the converter does not squeeze need it (v7's vectors stay (1, 1, C)), plus the
    per-head (H, N) tensors of v5.2/v6, whose head count a flat (C,) tensor no longer tells.
    """
    sd = dict(state_dict)
    if version in ("5.2", "6"):
        faaaa = sd.get("blocks.0.att.time_faaaa")
        if faaaa is None or faaaa.dim() != 2:
            raise CheckpointError(
                path,
                f"v{version} needs blocks.0.att.time_faaaa shaped (n_head, head_size) to know the head count",
            )
        n_head = faaaa.shape[0]
        per_head = ("time_faaaa", "time_decay") if version == "5.2" else ("time_faaaa",)
        for key, t in sd.items():
            if key.rsplit(".", 1)[-1] in per_head and key.startswith("blocks."):
                sd[key] = t.reshape(n_head, -1)
    if version == "7":
        for key, t in sd.items():
            name = _suffix(key)
            leaf = name.rsplit(".", 1)[-1]
            if (name.startswith("att.") and leaf in _V7_SHIFT_NAMES + _V7_VECTORS) or name == "ffn.x_k":
                sd[key] = t.reshape(1, 1, -1)
            elif name == "att.r_k" and t.dim() != 2:
                raise CheckpointError(path, f"{key} must be shaped (n_head, head_size), got {tuple(t.shape)}")
    return sd


def _concat_v7_shifts(sd: dict[str, Tensor], path: str | Path | None) -> dict[str, Tensor]:
    """Replace each layer's six ``att.x_*`` (1, 1, C) vectors with one (6, 1, C) ``att.x_rwkvag``,
    placed where the first of them was, always in r, w, k, v, a, g order (the order rwkv.cpp's graph
    slices; the converter relies on the BlinkDL file's order, this does not)."""
    out: dict[str, Tensor] = {}
    for key, t in sd.items():
        m = _LAYER_RE.match(key)
        if m is None or not m.group(2).startswith("att.x_") or m.group(2) == "att.x_rwkvag":
            out[key] = t
            continue
        prefix = f"blocks.{m.group(1)}.att."
        if prefix + "x_rwkvag" in out:
            continue
        missing = [n for n in _V7_SHIFT_NAMES if prefix + n not in sd]
        if missing:
            raise CheckpointError(path, f"layer {m.group(1)} lacks {', '.join(prefix + n for n in missing)}")
        out[prefix + "x_rwkvag"] = torch.cat([sd[prefix + n].float() for n in _V7_SHIFT_NAMES], dim=0)
    return out


# --- reading -----------------------------------------------------------------------------


def is_rwkvcpp_file(path: str | Path) -> bool:
    """True when the file starts with the rwkv.cpp magic; cheap enough for format sniffing."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and struct.unpack("<i", head)[0] == MAGIC


def _read_header(path: Path, buf: np.ndarray) -> RwkvCppHeader:
    if buf.size < _HEADER.size:
        raise CheckpointError(
            path, f"file is {buf.size} bytes, shorter than the {_HEADER.size}-byte rwkv.cpp header"
        )
    magic, version, n_vocab, n_embed, n_layer, data_type = _HEADER.unpack(buf[: _HEADER.size].tobytes())
    if magic != MAGIC:
        raise CheckpointError(
            path, f"not an rwkv.cpp file: magic is {magic & 0xFFFFFFFF:#010x}, expected {MAGIC:#010x}"
        )
    if version not in FILE_VERSIONS:
        raise CheckpointError(path, f"unknown rwkv.cpp file version {version}; this reader knows 100 and 101")
    _check_data_type(path, data_type, version, "the file header")
    for name, value in (("n_vocab", n_vocab), ("n_embed", n_embed), ("n_layer", n_layer)):
        if value <= 0:
            raise CheckpointError(path, f"header field {name} is {value}; it must be positive")
    return RwkvCppHeader(version, n_vocab, n_embed, n_layer, data_type)


def _check_data_type(path: Path, data_type: int, file_version: int, where: str) -> None:
    if data_type in _REMOVED_TYPES:
        raise CheckpointError(
            path,
            f"{where} uses data type {data_type} ({DATA_TYPE_NAMES[data_type]}), a format rwkv.cpp removed; "
            "re-quantize the model from its FP16/FP32 file",
        )
    if data_type not in DATA_TYPE_NAMES:
        raise CheckpointError(path, f"{where} has unknown data type {data_type}")
    if data_type in _QUANTIZED and file_version == FILE_VERSION_0:
        raise CheckpointError(
            path,
            f"{where} is {DATA_TYPE_NAMES[data_type]} in a version-100 file, whose quantized block layout "
            "predates ggml's 2023-05 change and which rwkv.cpp itself no longer loads; "
            "re-quantize the model from its FP16/FP32 file with a current rwkv.cpp",
        )


def _dequantize(raw: np.ndarray, data_type: int) -> np.ndarray:
    """Blocks of 32 values -> float32, one numpy pass over all blocks (ggml's dequantize_row_*).

    Layouts (little-endian, fp16 scales): Q4_0 = d, qs[16]: v = d*(q-8); Q4_1 = d, m, qs[16]:
    v = d*q+m; Q5_0 = d, qh[4], qs[16]: v = d*(q-16); Q5_1 = d, m, qh[4], qs[16]: v = d*q+m;
    Q8_0 = d, int8 qs[32]: v = d*q. Byte j of qs holds value j in its low nibble and value j+16
    in its high nibble; bit j of the little-endian uint32 qh is the fifth bit of value j.
    """
    blocks = raw.reshape(-1, _BLOCK_BYTES[data_type])  # (n_blocks, block_bytes)

    def f16(col: int) -> np.ndarray:  # (n_blocks, 1) float32
        return np.ascontiguousarray(blocks[:, col : col + 2]).view("<f2").astype(np.float32)

    d = f16(0)
    if data_type == Q8_0:
        q = np.ascontiguousarray(blocks[:, 2:]).view(np.int8).astype(np.float32)  # (n_blocks, 32)
        return (q * d).reshape(-1)
    has_min = data_type in (Q4_1, Q5_1)
    start = 4 if has_min else 2
    if data_type in (Q5_0, Q5_1):
        qh = np.ascontiguousarray(blocks[:, start : start + 4]).view("<u4")  # (n_blocks, 1)
        high = ((qh >> np.arange(QK, dtype=np.uint32)) & 1).astype(np.uint8) << 4  # (n_blocks, 32)
        start += 4
    else:
        high = np.zeros((1, QK), dtype=np.uint8)
    qs = blocks[:, start : start + QK // 2]  # (n_blocks, 16)
    q = (np.concatenate([qs & 0x0F, qs >> 4], axis=1) | high).astype(np.float32)  # (n_blocks, 32)
    if has_min:
        return (q * d + f16(2)).reshape(-1)
    offset = 8 if data_type == Q4_0 else 16
    return ((q - offset) * d).reshape(-1)


def read_rwkvcpp_raw(path: str | Path) -> tuple[RwkvCppHeader, dict[str, Tensor]]:
    """Read a file as stored: rwkv.cpp keys and layouts, PyTorch-ordered shapes, dequantized to float32.

    For callers that want rwkv.cpp's own tensors (and for files too small to say their version).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    size = path.stat().st_size
    if size < _HEADER.size:
        raise CheckpointError(
            path, f"file is {size} bytes, shorter than the {_HEADER.size}-byte rwkv.cpp header"
        )
    try:
        buf = np.memmap(path, dtype=np.uint8, mode="r")  # pages in what we touch, nothing more
    except (OSError, ValueError) as e:
        raise CheckpointError(path, f"cannot read the file: {e}") from e
    header = _read_header(path, buf)
    tensors: dict[str, Tensor] = {}
    off = _HEADER.size
    while off < size:
        key, tensor, off = _read_tensor(path, buf, off, header.file_version, len(tensors))
        if key in tensors:
            raise CheckpointError(path, f"tensor {key!r} appears twice")
        tensors[key] = tensor
    del buf
    emb = tensors.get("emb.weight")
    if emb is not None and tuple(emb.shape) != (header.n_vocab, header.n_embed):
        raise CheckpointError(
            path,
            f"emb.weight has shape {tuple(emb.shape)} but the header says n_vocab={header.n_vocab}, "
            f"n_embed={header.n_embed}",
        )
    return header, tensors


def _read_tensor(
    path: Path, buf: np.ndarray, off: int, file_version: int, index: int
) -> tuple[str, Tensor, int]:
    """Parse the tensor record at ``off``; return its key, float32 tensor and the next offset."""
    size = buf.size
    where = f"tensor #{index} (at byte {off})"
    if off + _TENSOR_HEADER.size > size:
        raise CheckpointError(path, f"truncated: {where} header is cut off at end of file")
    dim_count, key_length, data_type = _TENSOR_HEADER.unpack(buf[off : off + _TENSOR_HEADER.size].tobytes())
    off += _TENSOR_HEADER.size
    if not 1 <= dim_count <= MAX_DIMS:
        raise CheckpointError(
            path, f"{where} has {dim_count} dimensions; rwkv.cpp files have 1 to {MAX_DIMS}"
        )
    if not 1 <= key_length <= MAX_KEY_LENGTH:
        raise CheckpointError(path, f"{where} has an absurd key length {key_length}")
    if off + 4 * dim_count + key_length > size:
        raise CheckpointError(path, f"truncated: {where} shape or key is cut off at end of file")
    ggml_shape = struct.unpack(f"<{dim_count}i", buf[off : off + 4 * dim_count].tobytes())  # innermost first
    off += 4 * dim_count
    try:
        key = buf[off : off + key_length].tobytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(path, f"{where} has a key that is not UTF-8: {e}") from e
    off += key_length
    where = f"tensor {key!r}"
    _check_data_type(path, data_type, file_version, where)
    if any(n <= 0 for n in ggml_shape):
        raise CheckpointError(path, f"{where} has an absurd shape {ggml_shape} (ggml order)")
    count = math.prod(ggml_shape)  # Python ints: absurd shapes cannot overflow into small sizes
    if data_type in _QUANTIZED:
        if ggml_shape[0] % QK:
            raise CheckpointError(
                path, f"{where} is quantized but its rows ({ggml_shape[0]}) are not a multiple of {QK}"
            )
        nbytes = count // QK * _BLOCK_BYTES[data_type]
    else:
        nbytes = count * (4 if data_type == FP32 else 2)
    if off + nbytes > size:
        raise CheckpointError(
            path, f"truncated: {where} needs {nbytes} bytes of data but only {size - off} remain in the file"
        )
    raw = buf[off : off + nbytes]
    if data_type == FP32:
        values = np.array(raw.view("<f4"), dtype=np.float32)  # copy: detach from the memmap
    elif data_type == FP16:
        values = raw.view("<f2").astype(np.float32)
    else:
        values = _dequantize(raw, data_type)
    shape = tuple(reversed(ggml_shape))  # PyTorch order
    return key, torch.from_numpy(values.reshape(shape)), off + nbytes


def read_rwkvcpp(path: str | Path) -> tuple[RwkvCppHeader, dict[str, Tensor]]:
    """Read an rwkv.cpp file as the BlinkDL checkpoint it came from: BlinkDL keys, values and
    orientation (``*.weight`` is (out_features, in_features)), float32, quantized types dequantized.

    The RWKV version is read from the keys (:func:`rwkvcpp_version`). Values the format stores
    lossily (quantized weights, v5 decays near 1) come back as close as the file allows.
    """
    header, stored = read_rwkvcpp_raw(path)
    version = rwkvcpp_version(stored.keys(), path=path)
    return header, from_rwkvcpp_layout(stored, version, path=path)


# --- writing -----------------------------------------------------------------------------


def _fp16_kind(data_type: str, path: str | Path) -> bool:
    kind = data_type.lower()
    if kind in ("fp16", "float16"):
        return True
    if kind in ("fp32", "float32"):
        return False
    raise CheckpointError(
        path, f"data_type must be 'fp32' or 'fp16' (rwkv.cpp's converter writes no other), got {data_type!r}"
    )


def write_rwkvcpp(
    path: str | Path,
    state_dict: Mapping[str, Tensor],
    *,
    version: str,
    data_type: str = "fp32",
    file_version: int = FILE_VERSION_1,
) -> None:
    """Write a BlinkDL state dict as rwkv.cpp's converter would, atomically.

    Header: file version 101 (what the current converter writes; pass ``file_version=100`` to
    reproduce files from the older converter, e.g. for byte comparisons: FP32/FP16 data are the
    same in both), header data type 0 or 1. In FP16 files only tensors with more than one
    dimension become FP16, and not the ones the converter keeps FP32 (``.time_*``, v7's
    ``k_k, k_a, r_k, x_rwkvag, x_k, w0, a0, v0``). Tensors go in the state dict's order.
    ``version`` must match what the keys say (see :func:`rwkvcpp_version`).
    """
    fp16 = _fp16_kind(data_type, path)
    if file_version not in FILE_VERSIONS:
        raise CheckpointError(path, f"file_version must be 100 or 101, got {file_version}")
    detected = rwkvcpp_version(state_dict.keys(), path=path)
    if detected != _check_version(version, path):
        raise CheckpointError(
            path, f"version={version!r} was asked for but the tensor names are those of v{detected}"
        )
    emb = state_dict.get("emb.weight")
    if emb is None or emb.dim() != 2:
        raise CheckpointError(path, "the state dict needs a 2-D emb.weight (n_vocab, n_embed)")
    n_layer = 0
    while f"blocks.{n_layer}.ln1.weight" in state_dict:  # the converter's count
        n_layer += 1
    if n_layer == 0:
        raise CheckpointError(path, "the state dict has no blocks.0.ln1.weight")
    stored = to_rwkvcpp_layout(state_dict, version, path=path)

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(
            _HEADER.pack(MAGIC, file_version, emb.shape[0], emb.shape[1], n_layer, FP16 if fp16 else FP32)
        )
        for key, t in stored.items():
            half = fp16 and t.dim() > 1 and not any(s in key for s in _FP16_KEEP_FP32)
            # torch's float32 -> float16 rounding (to nearest even), as the converter's .half()
            array = t.half().numpy() if half else t.numpy()
            encoded = key.encode("utf-8")
            f.write(_TENSOR_HEADER.pack(t.dim(), len(encoded), FP16 if half else FP32))
            f.write(struct.pack(f"<{t.dim()}i", *reversed(t.shape)))  # ggml order
            f.write(encoded)
            f.write(np.ascontiguousarray(array, dtype="<f2" if half else "<f4").tobytes())
        f.flush()
        os.fsync(f.fileno())
