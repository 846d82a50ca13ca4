"""GGUF, llama.cpp's file format, for RWKV-6 ("rwkv6") and RWKV-7 ("rwkv7"): read and write.

The container (header, metadata, tensor table, alignment) and the quantized block formats are the
``gguf`` package's, which llama.cpp maintains; this module holds only what is RWKV's: the flat name
map between BlinkDL's names and llama.cpp's, the layout changes llama.cpp's converter
(``convert_hf_to_gguf.py``, ``conversion/rwkv.py``) makes, and the metadata llama.cpp reads
(``src/models/rwkv6.cpp``, ``rwkv7.cpp``). Layouts, in numpy order (the GGUF dims reversed):

- both: vectors (token-shift weights, decay biases, k_k, k_a, r_k flattened) are stored 1-D; the
  token-shift vectors of time mixing are stacked into one ``time_mix_lerp_fused`` (n, 1, 1, C),
  in the order w, k, v, r, g (RWKV-6, whose ``time_maa_x`` stays apart as ``time_mix_lerp_x``) or
  r, w, k, v, a, g (RWKV-7);
- the low-rank matrices are transposed (BlinkDL keeps them (in, out); llama.cpp (out, in)), and
  RWKV-6's per-offset up-projections ``time_maa_w2`` (5, D, C) become (5, C, D);
- RWKV-7's layer 0 must hold ``time_mix_v0/v1/v2`` although they are never used (layer 0's value
  is v_first itself); llama.cpp's converter fills them with copies of layer 0's a0/a1/a2 (their
  shapes), and so does :func:`write_gguf`. Reading drops them again;
- RWKV-6 files made from Hugging Face folders with ``rescale_every`` > 0 have every layer's
  ``time_mix_output`` and ``channel_mix_value`` divided by 2^(layer // rescale_every) (llama.cpp
  halves the residual stream instead); reading multiplies them back, exactly (a power of two).

llama.cpp keeps some tensors in F32 whatever the file type: 1-D tensors, norms, biases, and the
RWKV tensors ``time_mix_first``, ``time_mix_w1``/``w2``, ``time_mix_decay_w1``/``w2`` and
``time_mix_lerp_fused``; a matrix whose rows do not split into whole quantization blocks falls back
to F16. :func:`write_gguf` follows the same rules, so its files hold the same bytes as llama.cpp's
own conversion of the same weights (tests/test_gguf.py compares them tensor by tensor).

The tokenizer is llama.cpp's ``rwkv`` model: token 0 is ``<s>``, then the World vocabulary with each
token written as the inside of Python's ``repr`` of its bytes (``\\xNN``, ``\\n``, ``\\\\`` ...),
padded to the embedding's rows with ``[PADn]``.

Reading is guarded against hostile files: every read of the container stays inside the file, and
the counts in the header and in array fields are checked against what the file's size can hold
(and against fixed caps) before the ``gguf`` package builds anything from them, so a lying count
or offset is a :class:`CheckpointError` naming the file, never a hang or a huge allocation.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError, RwkvkitError

MAGIC = b"GGUF"
ARCH_VERSIONS = {"rwkv6": "6", "rwkv7": "7"}  # the RWKV architectures llama.cpp runs
VERSION_ARCH = {v: k for k, v in ARCH_VERSIONS.items()}
WRITE_DTYPES = ("fp32", "fp16", "bf16", "q8_0")  # what `rwkvkit convert --to gguf --dtype` offers
# write_gguf also takes these, quantized by the gguf package's reference rounding (llama.cpp's
# llama-quantize chooses some tensors' types differently, e.g. Q6_K for output.weight).
LEGACY_QUANT_DTYPES = ("q4_0", "q4_1", "q5_0", "q5_1")
WORLD_EOT_ID = 261  # "\n\n": the end of a chat turn, which llama.cpp's converter marks as EOT

# Hostile-file caps: far above any real RWKV GGUF (a 61-layer model has ~1600 tensors and ~50 keys;
# the World tokenizer's two arrays hold 65536 items each).
MAX_TENSORS = 1 << 16
MAX_KEYS = 1 << 16
MAX_ARRAY_ITEMS = 1 << 22  # over all array fields of a file together

# ---------------------------------------------------------------------------------------------
# The flat name map: BlinkDL name -> llama.cpp name. Inside a block, "blocks.N." <-> "blk.N.".

_TOP = {
    "emb.weight": "token_embd.weight",
    "blocks.0.ln0.weight": "token_embd_norm.weight",
    "blocks.0.ln0.bias": "token_embd_norm.bias",
    "ln_out.weight": "output_norm.weight",
    "ln_out.bias": "output_norm.bias",
    "head.weight": "output.weight",
}
_BLOCK_COMMON = {
    "ln1.weight": "attn_norm.weight",
    "ln1.bias": "attn_norm.bias",
    "ln2.weight": "attn_norm_2.weight",
    "ln2.bias": "attn_norm_2.bias",
    "att.receptance.weight": "time_mix_receptance.weight",
    "att.key.weight": "time_mix_key.weight",
    "att.value.weight": "time_mix_value.weight",
    "att.output.weight": "time_mix_output.weight",
    "att.ln_x.weight": "time_mix_ln.weight",
    "att.ln_x.bias": "time_mix_ln.bias",
    "ffn.key.weight": "channel_mix_key.weight",
    "ffn.value.weight": "channel_mix_value.weight",
}
_BLOCK = {
    "6": {
        **_BLOCK_COMMON,
        "att.time_maa_x": "time_mix_lerp_x.weight",
        "att.time_maa_w1": "time_mix_w1.weight",
        "att.time_maa_w2": "time_mix_w2.weight",
        "att.time_decay": "time_mix_decay.weight",
        "att.time_decay_w1": "time_mix_decay_w1.weight",
        "att.time_decay_w2": "time_mix_decay_w2.weight",
        "att.time_faaaa": "time_mix_first.weight",
        "att.gate.weight": "time_mix_gate.weight",
        "ffn.time_maa_k": "channel_mix_lerp_k.weight",
        "ffn.time_maa_r": "channel_mix_lerp_r.weight",
        "ffn.receptance.weight": "channel_mix_receptance.weight",
    },
    "7": {
        **_BLOCK_COMMON,
        **{f"att.{p}{i}": f"time_mix_{p}{i}.weight" for p in "wav" for i in "012"},
        "att.g1": "time_mix_g1.weight",
        "att.g2": "time_mix_g2.weight",
        "att.k_k": "time_mix_k_k.weight",
        "att.k_a": "time_mix_k_a.weight",
        "att.r_k": "time_mix_r_k.weight",
        "ffn.x_k": "channel_mix_lerp_k.weight",
    },
}
# The token-shift vectors stacked into blk.N.time_mix_lerp_fused.weight, in llama.cpp's order.
_FUSED_LERPS = {
    "6": ("att.time_maa_w", "att.time_maa_k", "att.time_maa_v", "att.time_maa_r", "att.time_maa_g"),
    "7": ("att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a", "att.x_g"),
}
_FUSED = "time_mix_lerp_fused.weight"
_V6_SEPARATE_LERPS = {f"att.time_maa_{c}": f"time_mix_lerp_{c}.weight" for c in "wkvrg"}  # older files
# BlinkDL leaves stored (in, out) that llama.cpp stores transposed.
_TRANSPOSED = {
    "w1",
    "w2",
    "a1",
    "a2",
    "v1",
    "v2",
    "g1",
    "g2",
    "time_maa_w1",
    "time_decay_w1",
    "time_decay_w2",
}
# Tensors llama.cpp keeps in F32 whatever the file type (besides 1-D ones, norms and biases).
_ALWAYS_F32 = ("time_mix_first", "time_mix_w1", "time_mix_w2", "time_mix_decay_w1", "time_mix_decay_w2",
               "time_mix_lerp_fused")  # fmt: skip
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_GGUF_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def to_gguf_layout(sd: dict[str, Tensor], version: str) -> dict[str, Tensor]:
    """A BlinkDL-named RWKV-6/7 state dict -> llama.cpp's names and layouts, as float32 tensors."""
    block_map, order = _BLOCK[version], _FUSED_LERPS[version]
    out: dict[str, Tensor] = {}
    lerps: dict[str, dict[str, Tensor]] = {}
    for name, t in sd.items():
        t = t.float()
        if name in _TOP:
            out[_TOP[name]] = t.contiguous()
            continue
        m = _BLOCK_RE.match(name)
        if m is None:
            raise KeyError(name)
        layer, rest = m.groups()
        if rest in order:
            lerps.setdefault(layer, {})[rest] = t.reshape(-1)
            continue
        if version == "7" and layer == "0" and rest in ("att.v0", "att.v1", "att.v2"):
            continue  # never used; llama.cpp's placeholders are written below
        leaf = _leaf(rest)
        if leaf in _TRANSPOSED:
            t = t.t()
        elif leaf == "time_maa_w2":
            t = t.permute(0, 2, 1)  # (5, D, C) -> (5, C, D)
        elif not rest.endswith((".weight", ".bias")) and leaf != "time_faaaa":
            t = t.reshape(-1)  # the (1, 1, C) vectors, and r_k (H, N)
        out[f"blk.{layer}.{block_map[rest]}"] = t.contiguous()
    for layer, parts in lerps.items():
        missing = [p for p in order if p not in parts]
        if missing:
            raise KeyError(f"blocks.{layer}.{missing[0]}")
        out[f"blk.{layer}.{_FUSED}"] = torch.stack([parts[p] for p in order]).view(len(order), 1, 1, -1)
    if version == "7":
        for i in "012":  # layer 0's value-residual LoRA: llama.cpp wants it, shaped as a0/a1/a2
            out[f"blk.0.time_mix_v{i}.weight"] = out[f"blk.0.time_mix_a{i}.weight"].clone()
    return out


def from_gguf_layout(
    tensors: dict[str, Tensor], version: str, head_size: int, rescale_every: int = 0
) -> dict[str, Tensor]:
    """llama.cpp's names and layouts -> a BlinkDL-named state dict; vectors stay 1-D (the loader
    reshapes size-1 dimensions). The inverse of :func:`to_gguf_layout`, and also reads RWKV-6
    files with separate token-shift vectors and undoes ``rescale_every``."""
    back = {g: b for b, g in _BLOCK[version].items()}
    if version == "6":
        back.update({g: b for b, g in _V6_SEPARATE_LERPS.items()})
    top_back = {g: b for b, g in _TOP.items()}
    order = _FUSED_LERPS[version]
    sd: dict[str, Tensor] = {}
    for name, t in tensors.items():
        if name in top_back:
            sd[top_back[name]] = t
            continue
        m = _GGUF_BLOCK_RE.match(name)
        if m is None:
            raise KeyError(name)
        layer, rest = m.groups()
        if rest == _FUSED:
            for part, vector in zip(order, t.reshape(len(order), -1), strict=True):
                sd[f"blocks.{layer}.{part}"] = vector.clone()
            continue
        if (
            version == "7"
            and layer == "0"
            and rest in ("time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight")
        ):
            continue
        if rest not in back:
            raise KeyError(name)
        blinkdl = back[rest]
        leaf = _leaf(blinkdl)
        if leaf in _TRANSPOSED:
            t = t.t()
        elif leaf == "time_maa_w2":
            t = t.permute(0, 2, 1)
        elif leaf == "r_k":
            t = t.reshape(-1, head_size)
        if version == "6" and rescale_every > 0 and blinkdl in ("att.output.weight", "ffn.value.weight"):
            t = t * 2.0 ** (int(layer) // rescale_every)  # exact: a power of two
        sd[f"blocks.{layer}.{blinkdl}"] = t.contiguous()
    return sd


# ---------------------------------------------------------------------------------------------
# Reading the container, safely


class _Refused(Exception):
    """Raised inside the bounded reader; turned into a CheckpointError naming the file."""


def _bounded_reader(path: Path) -> Any:
    """``gguf.GGUFReader`` on ``path``, refusing any read past the end of the file and any count that
    the file's size cannot hold (or that exceeds the caps above) before the reader acts on it.

    GGUFReader trusts the counts it reads: a lying array length makes it loop over empty reads,
    appending an object per item, for as long as the length says. These overrides of its small
    read helpers stop that at the first impossible value. Arrays are also kept as one part each
    (see ``_get_field_parts``; :func:`_array` reads them), not one numpy view per item."""
    import gguf

    class BoundedReader(gguf.GGUFReader):
        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
            count, offset = int(count), int(offset)
            end = offset + np.dtype(dtype).itemsize * count
            if offset < 0 or count < 0 or end > len(self.data):
                raise _Refused(f"truncated or corrupt: a read at byte {offset} of {count} items runs past the "
                               f"end of the file ({len(self.data)} bytes)")  # fmt: skip
            return super()._get(offset, dtype, count, override_order)

        def _check_count(self, what: str, count: int, offset: int, min_size: int, cap: int) -> None:
            if count > cap or offset + count * min_size > len(self.data):
                raise _Refused(
                    f"the header says {count} {what}, more than the file's {len(self.data)} bytes can hold "
                    f"(or than the limit of {cap}); the file is truncated or corrupt"
                )

        def _build_fields(self, offs: int, count: int) -> int:
            self._check_count("metadata keys", int(count), offs, 8 + 4 + 1, MAX_KEYS)
            return super()._build_fields(offs, count)

        def _build_tensor_info(self, offs: int, count: int) -> Any:
            self._check_count("tensors", int(count), offs, 8 + 4 + 4 + 8, MAX_TENSORS)
            return super()._build_tensor_info(offs, count)

        def _get_field_parts(self, orig_offs: int, raw_type: int) -> Any:
            if raw_type != gguf.GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            head = self._get(orig_offs, np.uint32)
            item_type, length = int(head[0]), int(self._get(orig_offs + 4, np.uint64)[0])
            self.items_seen = getattr(self, "items_seen", 0) + length
            self._check_count("array items", self.items_seen, orig_offs + 12, 0, MAX_ARRAY_ITEMS)
            self._check_count(
                "array items", length, orig_offs + 12, _min_item_size(item_type), MAX_ARRAY_ITEMS
            )
            if self.byte_order != "I":
                raise _Refused(
                    "a big-endian GGUF file; rwkvkit (like llama.cpp on this machine) reads little-endian ones"
                )
            if item_type == gguf.GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            # One part for the whole array instead of one numpy view per item: the World tokenizer's
            # 65536 tokens took the stock reader seconds. _array() reads this form back.
            start = pos = orig_offs + 12
            if item_type == gguf.GGUFValueType.STRING:
                size = len(self.data)
                for _ in range(length):
                    if pos + 8 > size:
                        break  # _get below refuses it
                    pos += 8 + struct.unpack_from("<Q", self.data, pos)[0]
                body = self._get(start, np.uint8, pos - start)
            else:
                body = self._get(start, self.gguf_scalar_to_np[gguf.GGUFValueType(item_type)], length)
            kinds = [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType(item_type)]
            return 12 + int(body.nbytes), [head, self._get(orig_offs + 4, np.uint64), body], [2], kinds

    return BoundedReader(path)


def _min_item_size(item_type: int) -> int:
    """The fewest bytes one item of a GGUF array of this value type can take."""
    import gguf

    t = gguf.GGUFValueType
    sizes = {t.UINT8: 1, t.INT8: 1, t.BOOL: 1, t.UINT16: 2, t.INT16: 2, t.UINT32: 4, t.INT32: 4,
             t.FLOAT32: 4, t.UINT64: 8, t.INT64: 8, t.FLOAT64: 8, t.STRING: 8, t.ARRAY: 12}  # fmt: skip
    return sizes.get(item_type, 1)


def open_gguf(path: str | Path) -> Any:
    """The parsed container (metadata and tensor table; the tensor data stays memory-mapped)."""
    path = Path(path)
    try:
        reader = _bounded_reader(path)
        if reader.byte_order != "I":
            raise _Refused("a big-endian GGUF file; rwkvkit (like llama.cpp here) reads little-endian ones")
        return reader
    except _Refused as e:
        raise CheckpointError(path, str(e)) from None
    except (ValueError, KeyError, IndexError, OverflowError, TypeError) as e:
        raise CheckpointError(path, f"not a readable GGUF file; it is truncated or corrupt ({e})") from None
    except OSError as e:
        raise CheckpointError(path, f"cannot read the file: {e}") from None


def _field(reader: Any, key: str, path: Path) -> Any:
    """A scalar or string metadata value, or None when the key is absent."""
    import gguf

    field = reader.fields.get(key)
    if field is None:
        return None
    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        raise CheckpointError(path, f"metadata key {key!r} holds an array where a single value belongs")
    if kind == gguf.GGUFValueType.STRING:
        try:
            return bytes(field.parts[field.data[0]]).decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(path, f"metadata key {key!r} is not valid UTF-8") from None
    return field.parts[field.data[0]][0].item()


def _array(reader: Any, key: str) -> list[Any] | None:
    """A metadata array as a list: bytes for strings, Python numbers otherwise; None when absent."""
    import gguf

    field = reader.fields.get(key)
    if field is None or field.types[0] != gguf.GGUFValueType.ARRAY or len(field.types) < 2:
        return None
    body = field.parts[field.data[0]]  # the whole array: see _bounded_reader
    if field.types[1] == gguf.GGUFValueType.ARRAY:
        return None
    if field.types[1] != gguf.GGUFValueType.STRING:
        return body.tolist()
    raw, items, pos = body.tobytes(), [], 0
    while pos < len(raw):
        (n,) = struct.unpack_from("<Q", raw, pos)
        items.append(raw[pos + 8 : pos + 8 + n])
        pos += 8 + n
    return items


def _size(reader: Any, key: str, path: Path, *, default: int | None = None) -> int:
    """A positive integer hyperparameter, checked (a hostile file may put anything there)."""
    arch = _field(reader, "general.architecture", path)
    value = _field(reader, key.format(arch=arch), path)
    if value is None:
        if default is not None:
            return default
        raise CheckpointError(path, f"the metadata key {key.format(arch=arch)!r} is missing")
    if not isinstance(value, int) or not 0 <= value <= 1 << 24:
        raise CheckpointError(path, f"the metadata key {key.format(arch=arch)!r} is {value!r}, not a size")
    return value


def gguf_architecture(reader: Any, path: Path) -> str:
    """The RWKV version ("6" or "7") of an opened GGUF, or an error naming what the file holds."""
    arch = _field(reader, "general.architecture", path)
    if arch not in ARCH_VERSIONS:
        raise CheckpointError(
            path,
            f"this GGUF file holds a {arch!r} model; rwkvkit reads llama.cpp's RWKV-6 ('rwkv6') and RWKV-7 "
            "('rwkv7') GGUF files",
        )
    return ARCH_VERSIONS[arch]


def _expected_shapes(reader: Any, path: Path, version: str, names: set[str]) -> dict[str, tuple[int, ...]]:
    """Every tensor llama.cpp's loader wants, with its numpy shape (size-1 dims left out), from the
    metadata; ``names`` (what the file holds) decides between RWKV-6's fused and separate lerps."""
    C = _size(reader, "{arch}.embedding_length", path)
    L = _size(reader, "{arch}.block_count", path)
    Fd = _size(reader, "{arch}.feed_forward_length", path)
    N = _size(reader, "{arch}.wkv.head_size", path)
    if min(C, L, Fd, N) == 0 or C % N:
        raise CheckpointError(path, f"inconsistent sizes: embedding {C}, {L} layers, FFN {Fd}, head size {N}")
    if len(reader.tensors) < L * 20:  # every layer has 20 tensors or more
        raise CheckpointError(
            path, f"the metadata says {L} layers, but the file has only {len(reader.tensors)} tensors"
        )
    emb = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if emb is None:
        raise CheckpointError(path, "missing tensor 'token_embd.weight'")
    V = int(emb.shape[-1]) if len(emb.shape) == 2 else 0
    vec = (C,)
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (V, C),
        "token_embd_norm.weight": vec,
        "token_embd_norm.bias": vec,
        "output_norm.weight": vec,
        "output_norm.bias": vec,
        "output.weight": (V, C),
    }
    for i in range(L):
        b = f"blk.{i}."
        for part in ("attn_norm", "attn_norm_2", "time_mix_ln"):
            shapes[f"{b}{part}.weight"] = shapes[f"{b}{part}.bias"] = vec
        for part in ("receptance", "key", "value", "output"):
            shapes[f"{b}time_mix_{part}.weight"] = (C, C)
        shapes[f"{b}channel_mix_key.weight"] = (Fd, C)
        shapes[f"{b}channel_mix_value.weight"] = (C, Fd)
        shapes[f"{b}channel_mix_lerp_k.weight"] = vec
        if version == "6":
            Dm = _size(reader, "{arch}.time_mix_extra_dim", path)
            Dd = _size(reader, "{arch}.time_decay_extra_dim", path)
            shapes[f"{b}time_mix_lerp_x.weight"] = vec
            if f"{b}{_FUSED}" in names:
                shapes[f"{b}{_FUSED}"] = (5, C)
            else:
                shapes.update({f"{b}{g}": vec for g in _V6_SEPARATE_LERPS.values()})
            shapes[f"{b}time_mix_w1.weight"] = (5 * Dm, C)
            shapes[f"{b}time_mix_w2.weight"] = (5, C, Dm)
            shapes[f"{b}time_mix_first.weight"] = (C // N, N)
            shapes[f"{b}time_mix_decay.weight"] = vec
            shapes[f"{b}time_mix_decay_w1.weight"] = (Dd, C)
            shapes[f"{b}time_mix_decay_w2.weight"] = (C, Dd)
            shapes[f"{b}time_mix_gate.weight"] = (C, C)
            shapes[f"{b}channel_mix_lerp_r.weight"] = vec
            shapes[f"{b}channel_mix_receptance.weight"] = (C, C)
        else:
            ranks = {
                "w": _size(reader, "{arch}.attention.decay_lora_rank", path),
                "a": _size(reader, "{arch}.attention.iclr_lora_rank", path),
                "v": _size(reader, "{arch}.attention.value_residual_mix_lora_rank", path),
                "g": _size(reader, "{arch}.attention.gate_lora_rank", path),
            }
            if i == 0:
                ranks["v"] = ranks["a"]  # llama.cpp's layer-0 placeholders are shaped as a0/a1/a2
            shapes[f"{b}{_FUSED}"] = (6, C)
            for p, D in ranks.items():
                if p != "g":
                    shapes[f"{b}time_mix_{p}0.weight"] = vec
                shapes[f"{b}time_mix_{p}1.weight"] = (D, C)
                shapes[f"{b}time_mix_{p}2.weight"] = (C, D)
            for part in ("k_k", "k_a", "r_k"):
                shapes[f"{b}time_mix_{part}.weight"] = vec
    return shapes


def _squeezed(shape: Iterable[int]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


_DEQUANTIZABLE: dict[int, bool] = {}


def _can_dequantize(qtype: Any) -> bool:
    """Whether the gguf package can turn this tensor type into floats (probed on one zero block)."""
    import gguf

    if qtype not in _DEQUANTIZABLE:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        try:
            if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                gguf.quants.dequantize(np.zeros((1, size), dtype=np.uint8), qtype)
            _DEQUANTIZABLE[qtype] = True
        except (NotImplementedError, ValueError, TypeError):
            _DEQUANTIZABLE[qtype] = False
    return _DEQUANTIZABLE[qtype]


def _to_torch(t: Any, shape: tuple[int, ...]) -> Tensor:
    """One tensor's data as a torch tensor of its logical numpy ``shape``: F32, F16 and BF16 as they
    are, every quantized type dequantized to float32."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if t.tensor_type == Q.F32:
        return torch.from_numpy(np.array(t.data, dtype=np.float32)).reshape(shape)
    if t.tensor_type == Q.F16:
        return torch.from_numpy(np.array(t.data, dtype=np.float16)).reshape(shape)
    if t.tensor_type == Q.BF16:  # the bits of the upper half of a float32: no rounding on the way
        raw = np.array(t.data, dtype=np.uint8).view(np.int16)
        return torch.from_numpy(raw).view(torch.bfloat16).reshape(shape)
    return torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)).reshape(shape)


def read_gguf(path: str | Path) -> tuple[dict[str, Tensor], str, dict[str, Any]]:
    """A llama.cpp RWKV-6/7 GGUF file -> (BlinkDL-named state dict, version, config overrides).

    Names, shapes and tensor types are all checked against the metadata before any tensor is
    dequantized, so a file that does not hold what it claims fails before anything large is made."""
    path = Path(path)
    reader = open_gguf(path)
    version = gguf_architecture(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    expected = _expected_shapes(reader, path, version, set(tensors))
    missing = [n for n in expected if n not in tensors]
    extra = [n for n in tensors if n not in expected]
    if missing:
        raise CheckpointError(path, f"missing tensors {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    if extra:
        raise CheckpointError(path, f"unexpected tensors {extra[:6]}{' ...' if len(extra) > 6 else ''}")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, t in tensors.items():
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if _squeezed(shape) != _squeezed(expected[name]):
            raise CheckpointError(
                path, f"tensor {name!r} has shape {shape}, but the metadata implies {expected[name]}"
            )
        if not _can_dequantize(t.tensor_type):
            raise CheckpointError(
                path,
                f"tensor {name!r} is of type {t.tensor_type.name}, which the gguf package cannot dequantize",
            )
        shapes[name] = shape
    tokens = _array(reader, "tokenizer.ggml.tokens")
    vocab = expected["token_embd.weight"][0]
    if tokens is not None and len(tokens) != vocab:
        raise CheckpointError(
            path, f"the tokenizer lists {len(tokens)} tokens for an embedding of {vocab} rows"
        )
    head_size = _size(reader, "{arch}.wkv.head_size", path)
    rescale = _size(reader, "{arch}.rescale_every_n_layers", path, default=0) if version == "6" else 0
    overrides: dict[str, Any] = {}
    key = f"{VERSION_ARCH[version]}.attention.layer_norm_epsilon"
    eps = _field(reader, key, path)
    if eps is not None:
        if not (isinstance(eps, float) and math.isfinite(eps) and 0 < eps < 1):
            raise CheckpointError(path, f"the metadata key {key!r} is {eps!r}, not a layer-norm epsilon")
        overrides["layer_norm_eps"] = float(f"{eps:.7g}")  # stored as float32: 1e-5 reads 9.99999975e-06
    data = {name: _to_torch(t, shapes[name]) for name, t in tensors.items()}
    sd = from_gguf_layout(data, version, head_size, rescale)
    return sd, version, overrides


# ---------------------------------------------------------------------------------------------
# The tokenizer in the metadata

_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)", re.DOTALL)
_UNESCAPED = {b"t": b"\t", b"n": b"\n", b"r": b"\r"}
_NOT_TEXT = (3, 5)  # gguf.TokenType.CONTROL ("<s>") and UNUSED ("[PADn]"): not vocabulary entries


def escape_token(token: bytes) -> str:
    """How llama.cpp's rwkv tokenizer stores a token: the inside of Python's repr of its bytes."""
    return repr(token)[2:-1]


def unescape_token(text: bytes) -> bytes:
    """The bytes of a stored token (llama.cpp's ``llama_unescape_rwkv_token``): \\t \\n \\r, \\xNN,
    and a backslash before any other character stands for that character."""

    def one(m: re.Match[bytes]) -> bytes:
        e = m.group(1)
        return bytes([int(e[1:], 16)]) if len(e) == 3 else _UNESCAPED.get(e, e)

    return _ESCAPE.sub(one, text)


def gguf_vocabulary(path: str | Path) -> dict[int, bytes]:
    """The vocabulary in a GGUF's metadata (id -> bytes), for llama.cpp's ``rwkv`` tokenizer model."""
    path = Path(path)
    reader = open_gguf(path)
    model = _field(reader, "tokenizer.ggml.model", path)
    tokens = _array(reader, "tokenizer.ggml.tokens")
    if model != "rwkv" or not tokens or not isinstance(tokens[0], bytes):
        from ..errors import TokenizerError

        raise TokenizerError(
            f"{path}: the file's tokenizer is {model!r}, not llama.cpp's 'rwkv' (RWKV World) tokenizer; "
            'pass --tokenizer ("world" or a vocabulary file)'
        )
    types = _array(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    return {
        i: unescape_token(text)
        for i, (text, kind) in enumerate(zip(tokens, types, strict=False))
        if i > 0 and kind not in _NOT_TEXT
    }


# ---------------------------------------------------------------------------------------------
# Writing


def _tensor_type(name: str, ndim: int, want: Any) -> Any:
    """The type llama.cpp's converter gives this tensor for the file type ``want``."""
    import gguf

    leaf = name.removeprefix("blk.").split(".", 1)[-1].removesuffix(".weight")
    if ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") or leaf in _ALWAYS_F32:
        return gguf.GGMLQuantizationType.F32
    return want


def _encode(name: str, t: Tensor, want: Any) -> tuple[np.ndarray, Any]:
    """A float32 tensor as the bytes of its GGUF type; rows that do not split into whole blocks of a
    quantized type fall back to F16, as in llama.cpp's converter."""
    import gguf

    data = t.numpy()
    qtype = _tensor_type(name, data.ndim, want)
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16


def write_gguf(
    path: str | Path,
    sd: dict[str, Tensor],
    config: Any,
    dtype: str,
    vocabulary: dict[int, bytes],
    *,
    chat_template: str,
    name: str | None = None,
) -> None:
    """Write a BlinkDL-named RWKV-6/7 state dict as a GGUF file llama.cpp runs, atomically.

    ``dtype`` is the file type: "fp32", "fp16", "bf16" or "q8_0" (matrices; see the module docstring
    for what stays F32). ``vocabulary`` (id -> bytes, ids from 1) is the model's World tokenizer."""
    import gguf

    from ..fileio import atomic_write

    version = getattr(config, "version", None)
    if version not in VERSION_ARCH:
        raise RwkvkitError(
            f"llama.cpp runs RWKV-6 and RWKV-7 only (its architectures 'rwkv6', 'rwkv7'); this is an "
            f"RWKV-{version} model: convert it to pth, safetensors, hf or rwkvcpp instead"
        )
    if version == "6" and config.att_width != config.n_embd:
        raise RwkvkitError(f"llama.cpp's RWKV-6 needs dim_att = n_embd; this model has {config.att_width}")
    if dtype not in (*WRITE_DTYPES, *LEGACY_QUANT_DTYPES):
        raise RwkvkitError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(WRITE_DTYPES)}")
    V = config.vocab_size
    if not vocabulary or max(vocabulary) >= V:
        raise RwkvkitError(f"the tokenizer's ids do not fit the model's {V} embedding rows")
    want = gguf.GGMLQuantizationType[dtype.upper().replace("FP", "F")]
    file_type = gguf.LlamaFileType["ALL_F32" if dtype == "fp32" else "MOSTLY_" + want.name]
    tensors = to_gguf_layout(sd, version)
    arch = VERSION_ARCH[version]

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_type(gguf.GGUFType.MODEL)
        if name:
            w.add_name(name)
        w.add_context_length(1 << 20)  # a recurrent model has no context limit
        w.add_embedding_length(config.n_embd)
        w.add_block_count(config.n_layer)
        w.add_feed_forward_length(config.ffn_dim)
        w.add_layer_norm_eps(config.layer_norm_eps)
        w.add_wkv_head_size(config.head_size)
        w.add_head_count(0)  # required by llama.cpp's loader, unused by RWKV
        if version == "6":
            w.add_rescale_every_n_layers(0)
            w.add_time_mix_extra_dim(config.mix_lora)
            w.add_time_decay_extra_dim(config.decay_lora)
        else:
            w.add_decay_lora_rank(config.decay_lora)
            w.add_iclr_lora_rank(config.iclr_lora)
            w.add_value_residual_mix_lora_rank(config.value_lora)
            w.add_gate_lora_rank(config.gate_lora)
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        tokens = ["<s>"] + [escape_token(vocabulary.get(i, b"")) or f"[PAD{i}]" for i in range(1, V)]
        kinds = [gguf.TokenType.CONTROL] + [
            gguf.TokenType.NORMAL if i in vocabulary else gguf.TokenType.UNUSED for i in range(1, V)
        ]
        w.add_tokenizer_model("rwkv")
        w.add_token_list(tokens)
        w.add_token_types(kinds)
        w.add_bos_token_id(0)
        w.add_eos_token_id(0)
        if vocabulary.get(WORLD_EOT_ID) == b"\n\n":
            w.add_eot_token_id(WORLD_EOT_ID)
        w.add_chat_template(chat_template)
        for tensor_name, t in tensors.items():
            data, qtype = _encode(tensor_name, t, want)
            w.add_tensor(tensor_name, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    atomic_write(path, write)
