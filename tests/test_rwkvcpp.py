"""rwkv.cpp files: reading and writing, checked against rwkv.cpp's own files; and its tiny trained
RWKV-5.0 ("5v1"), 5.2 ("5v2"), 6 and 7 models reproduce the logits rwkv.cpp produced for them,
through ``rwkvkit.load_model``, in one call and token by token.

The fixtures are real rwkv.cpp files (FP32, FP16 and Q5_x of one model each); the test reads them
with an independent little parser where it compares bytes, so a layout mistake in the module
cannot hide behind the same mistake in the test.

Logit tolerances (max abs logit difference, logits of size ~10-20): FP32 files must agree to
float32 rounding (1e-5; measured <= 3.6e-6). FP16 and Q5 files are lossy: rwkv.cpp computed the
expected logits from the FP32 weights, so a quantized file can only come as close as its rounding
allows. Their bounds are the values an independent correct implementation measured (fixtures
README) with ~25% headroom; a wrong transform or eps misses by far more (e.g. v5 with eps 64e-5:
~1.2 on FP32).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import rwkvcpp_fixtures
from torch import Tensor

import rwkvkit
from rwkvkit.errors import CheckpointError
from rwkvkit.formats.rwkvcpp import (
    RwkvCppHeader,
    from_rwkvcpp_layout,
    is_rwkvcpp_file,
    read_rwkvcpp,
    read_rwkvcpp_raw,
    rwkvcpp_version,
    to_rwkvcpp_layout,
    write_rwkvcpp,
)

# stem -> (rwkv.cpp version name, n_layer, n_embed, formats present), from the fixtures' README.
MODELS = {
    "tiny-rwkv-4v0-660K": ("4", 4, 128, ("FP32", "FP16", "Q5_0", "Q5_1")),
    "tiny-rwkv-5v1-730K": ("5.1", 12, 64, ("FP32", "FP16", "Q5_0", "Q5_1")),
    "tiny-rwkv-5v2-730K": ("5.2", 12, 64, ("FP32", "FP16", "Q5_0", "Q5_1")),
    "tiny-rwkv-6v0-3m": ("6", 12, 128, ("Q5_0", "Q5_1")),
    "tiny-rwkv-7v0-834K": ("7", 12, 64, ("FP32", "FP16", "Q5_0", "Q5_1")),
}
ALL_FILES = [f"{stem}-{fmt}.bin" for stem, (*_, fmts) in MODELS.items() for fmt in fmts]
WITH_FP32 = [stem for stem, (*_, fmts) in MODELS.items() if "FP32" in fmts]

FP16_REL = 2.0**-11  # half an fp16 ulp, relative (round to nearest)
FP16_SUBNORMAL = 2.0**-25  # half the spacing of fp16 subnormals: the absolute floor near zero


def fixture(name: str) -> Path:
    path = rwkvcpp_fixtures() / name
    if not path.is_file():
        pytest.skip(f"fixture {path} is absent")
    return path


def _records(data: bytes) -> list[tuple[bytes, str, bytes]]:
    """Split a file into (tensor header + shape + key bytes, key, data bytes), independently of the module."""
    sizes = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 7: (32, 22), 8: (32, 24), 9: (32, 34)}
    out, off = [], 24
    while off < len(data):
        n_dims, key_len, dtype = struct.unpack_from("<3i", data, off)
        shape = struct.unpack_from(f"<{n_dims}i", data, off + 12)
        head_end = off + 12 + 4 * n_dims + key_len
        per, nbytes = sizes[dtype]
        n = int(np.prod(shape)) // per * nbytes
        out.append(
            (data[off:head_end], data[head_end - key_len : head_end].decode(), data[head_end : head_end + n])
        )
        off = head_end + n
    return out


def _is_decay(key: str) -> bool:
    """Tensors whose stored value is exp/log arithmetic of the BlinkDL value (v4, v5)."""
    return key.endswith((".time_decay", ".time_first"))


# --- reading the fixtures --------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_FILES)
def test_every_fixture_reads(name: str) -> None:
    path = fixture(name)
    assert is_rwkvcpp_file(path)
    header, sd = read_rwkvcpp(path)
    version, n_layer, n_embed, _ = MODELS[name.rsplit("-", 1)[0]]
    fmt = name.rsplit("-", 1)[1].removesuffix(".bin")
    assert isinstance(header, RwkvCppHeader)
    assert (header.n_vocab, header.n_embed, header.n_layer) == (256, n_embed, n_layer)
    assert header.data_type_name == fmt
    assert header.file_version in (100, 101)
    assert rwkvcpp_version(sd.keys()) == version
    assert all(t.dtype == torch.float32 for t in sd.values())
    assert tuple(sd["emb.weight"].shape) == (256, n_embed)
    assert tuple(sd["head.weight"].shape) == (256, n_embed)
    assert all(f"blocks.{i}.ln1.weight" in sd for i in range(n_layer))
    assert not any(k.endswith("x_rwkvag") for k in sd)


BLINKDL_SHAPES = {
    "tiny-rwkv-4v0-660K-FP32.bin": {
        "emb.weight": (256, 128),
        "blocks.0.att.key.weight": (128, 128),
        "blocks.0.ffn.key.weight": (256, 128),  # (out, in): the FFN is 2x wide here
        "blocks.0.ffn.value.weight": (128, 256),
        "blocks.0.att.time_decay": (128,),
        "blocks.0.att.time_first": (128,),
        "blocks.0.att.time_mix_k": (1, 1, 128),
        "blocks.0.ffn.time_mix_r": (1, 1, 128),
    },
    "tiny-rwkv-5v1-730K-FP32.bin": {
        "blocks.0.att.time_decay": (8,),  # (H,)
        "blocks.0.att.time_first": (8,),
        "blocks.0.att.time_mix_k": (1, 1, 64),
        "blocks.0.att.ln_x.weight": (64,),
        "blocks.0.ffn.key.weight": (256, 64),
    },
    "tiny-rwkv-5v2-730K-FP32.bin": {
        "blocks.0.att.time_decay": (8, 8),  # (H, N)
        "blocks.0.att.time_faaaa": (8, 8),
        "blocks.0.att.time_mix_g": (1, 1, 64),
        "blocks.0.att.gate.weight": (64, 64),
    },
    "tiny-rwkv-6v0-3m-Q5_1.bin": {
        "blocks.0.att.time_maa_x": (1, 1, 128),
        "blocks.0.att.time_maa_w1": (128, 160),  # (C, 5 * D)
        "blocks.0.att.time_maa_w2": (5, 32, 128),  # (5, D, C)
        "blocks.0.att.time_decay": (1, 1, 128),
        "blocks.0.att.time_decay_w1": (128, 64),
        "blocks.0.att.time_decay_w2": (64, 128),
        "blocks.0.att.time_faaaa": (16, 8),
        "blocks.0.ffn.key.weight": (448, 128),
    },
    "tiny-rwkv-7v0-834K-FP32.bin": {
        **{f"blocks.0.att.x_{c}": (1, 1, 64) for c in "rwkvag"},
        "blocks.0.att.w0": (1, 1, 64),
        "blocks.0.att.w1": (64, 32),  # (C, D)
        "blocks.0.att.w2": (32, 64),
        "blocks.0.att.a1": (64, 32),
        "blocks.0.att.g2": (32, 64),
        "blocks.1.att.v1": (64, 32),
        "blocks.1.att.v0": (1, 1, 64),
        "blocks.0.att.k_k": (1, 1, 64),
        "blocks.0.att.r_k": (1, 64),  # (H, N): one head of 64
        "blocks.0.ffn.x_k": (1, 1, 64),
    },
}


@pytest.mark.parametrize("name", sorted(BLINKDL_SHAPES))
def test_keys_and_shapes_are_blinkdl(name: str) -> None:
    _, sd = read_rwkvcpp(fixture(name))
    for key, shape in BLINKDL_SHAPES[name].items():
        assert tuple(sd[key].shape) == shape, key


def test_v7_shift_vectors_split_in_rwkvag_order() -> None:
    path = fixture("tiny-rwkv-7v0-834K-FP32.bin")
    _, raw = read_rwkvcpp_raw(path)
    _, sd = read_rwkvcpp(path)
    packed = raw["blocks.3.att.x_rwkvag"]  # (6, 1, C)
    for i, c in enumerate("rwkvag"):
        assert torch.equal(sd[f"blocks.3.att.x_{c}"].reshape(-1), packed[i].reshape(-1))
    assert torch.equal(sd["blocks.3.att.w1"], raw["blocks.3.att.w1"].t())


def test_decays_are_undone() -> None:
    _, raw4 = read_rwkvcpp_raw(fixture("tiny-rwkv-4v0-660K-FP32.bin"))
    _, sd4 = read_rwkvcpp(fixture("tiny-rwkv-4v0-660K-FP32.bin"))
    torch.testing.assert_close(-torch.exp(sd4["blocks.1.att.time_decay"]), raw4["blocks.1.att.time_decay"])
    _, raw5 = read_rwkvcpp_raw(fixture("tiny-rwkv-5v1-730K-FP32.bin"))
    _, sd5 = read_rwkvcpp(fixture("tiny-rwkv-5v1-730K-FP32.bin"))
    w, u = sd5["blocks.1.att.time_decay"], sd5["blocks.1.att.time_first"]
    torch.testing.assert_close(torch.exp(-torch.exp(w)), raw5["blocks.1.att.time_decay"].reshape(-1))
    torch.testing.assert_close(torch.exp(u), raw5["blocks.1.att.time_first"].reshape(-1))


# --- lossy files against the FP32 file of the same model -------------------------------------


@pytest.mark.parametrize("stem", WITH_FP32)
def test_fp16_file_is_fp32_file_within_fp16_rounding(stem: str) -> None:
    _, ref = read_rwkvcpp(fixture(f"{stem}-FP32.bin"))
    _, half = read_rwkvcpp(fixture(f"{stem}-FP16.bin"))
    assert list(half) == list(ref)
    for key, r in ref.items():
        h = half[key]
        if r.dim() == 1 or _is_decay(key):  # the converter keeps these FP32
            assert torch.equal(h, r), key
        assert ((h - r).abs() <= r.abs() * FP16_REL + FP16_SUBNORMAL).all(), key


def _q5_bound(ref: Tensor, fmt: str) -> Tensor:
    """Worst error of ggml's Q5 round trip, per 32-value block of ``ref`` (flattened, shape (n_blocks, 1)).

    Q5_0: d = amax/16; rounding costs d/2 but the value at +amax clamps from 32 to 31, so d.
    Q5_1: d = (max - min)/31, rounding d/2. Both: d and m are stored in fp16 (2^-11 relative,
    times up to 31 steps), and a block too small for fp16's subnormals loses up to 2^-20.
    """
    blocks = ref.reshape(-1, 32)
    amax = blocks.abs().amax(1, keepdim=True)
    if fmt == "Q5_0":
        return amax / 16 * (1 + 16 * FP16_REL) + 2.0**-20
    spread = blocks.amax(1, keepdim=True) - blocks.amin(1, keepdim=True)
    return spread / 62 + (amax + spread) * FP16_REL + 2.0**-20


@pytest.mark.parametrize("stem", WITH_FP32)
def test_q5_files_dequantize_close_to_fp32(stem: str) -> None:
    _, ref = read_rwkvcpp(fixture(f"{stem}-FP32.bin"))
    max_err: dict[str, float] = {}
    sq_err: dict[str, float] = {}
    for fmt in ("Q5_0", "Q5_1"):
        _, q = read_rwkvcpp(fixture(f"{stem}-{fmt}.bin"))
        assert list(q) == list(ref)
        quantized = [k for k in ref if not torch.equal(q[k], ref[k])]
        assert quantized, "nothing was quantized"
        for key in quantized:
            assert ref[key].dim() == 2 and key not in ("emb.weight", "head.weight"), key  # rwkv.cpp's rule
            err = (q[key] - ref[key]).reshape(-1, 32).abs()
            assert (err <= _q5_bound(ref[key], fmt)).all(), key
        # Measured max abs diffs: 4v0 1.5e-2 / 1.0e-2, 5v1 2.4e-2 / 1.4e-2, 5v2 2.2e-2 / 1.4e-2,
        # 7v0 2.0e-2 / 1.4e-2 (Q5_0 / Q5_1). A wrong bit layout gives errors of order the weights.
        max_err[fmt] = max((q[k] - ref[k]).abs().max().item() for k in quantized)
        assert max_err[fmt] < 0.03
        sq_err[fmt] = sum(((q[k] - ref[k]) ** 2).sum().item() for k in quantized)
    # Q5_1's min offset buys precision: smaller worst case and RMS error in every model here (RMS
    # 2.7e-4 vs 2.9e-4 for 4v0 up to 3.7e-3 vs 4.2e-3 for 5v1). Not the mean abs error: in the
    # 4v0 model, whose FFN weights are near zero, Q5_1's fp16-rounded min costs it 2% there.
    assert max_err["Q5_1"] < max_err["Q5_0"]
    assert sq_err["Q5_1"] < sq_err["Q5_0"]


def test_v6_quantized_files_agree() -> None:
    _, q0 = read_rwkvcpp(fixture("tiny-rwkv-6v0-3m-Q5_0.bin"))
    _, q1 = read_rwkvcpp(fixture("tiny-rwkv-6v0-3m-Q5_1.bin"))
    assert list(q0) == list(q1)
    differ = [k for k in q0 if not torch.equal(q0[k], q1[k])]
    assert all(q0[k].dim() >= 2 for k in differ)
    # Two independent quantizations of the same weights: each within 1/16 of the block's range.
    assert max((q0[k] - q1[k]).abs().max().item() for k in differ) < 0.05


# --- writing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", WITH_FP32)
def test_fp32_round_trip(stem: str, tmp_path: Path) -> None:
    version = MODELS[stem][0]
    _, sd = read_rwkvcpp(fixture(f"{stem}-FP32.bin"))
    out = tmp_path / "out.bin"
    write_rwkvcpp(out, sd, version=version)
    header, back = read_rwkvcpp(out)
    assert header.file_version == 101 and header.data_type == 0
    assert list(back) == list(sd)
    for key, t in sd.items():
        if _is_decay(key):
            # The converter's float32 exp(-exp(w)) cannot be inverted bit for bit: two float32
            # roundings leave some stored values with no float32 preimage (v5.2 here: 8 of 768
            # values come back 1 ulp off in the file, 8e-8 in w). 1e-6 is ten times that.
            torch.testing.assert_close(back[key], t, rtol=0, atol=1e-6)
        else:
            assert torch.equal(back[key], t), key  # transposes, reshapes, concatenation: exact


@pytest.mark.parametrize("stem", WITH_FP32)
@pytest.mark.parametrize("fmt", ["FP32", "FP16"])
def test_write_reproduces_the_converters_bytes(stem: str, fmt: str, tmp_path: Path) -> None:
    """Writing the FP32 file's tensors gives rwkv.cpp's own FP32 and FP16 files: header, tensor order,
    shapes, per-tensor types, keys and data, byte for byte (decays: within one float32 ulp)."""
    original = fixture(f"{stem}-{fmt}.bin").read_bytes()
    _, sd = read_rwkvcpp(fixture(f"{stem}-FP32.bin"))
    # The v4 files come from the older converter, which wrote file version 100.
    file_version = struct.unpack_from("<i", original, 4)[0]
    out = tmp_path / "out.bin"
    write_rwkvcpp(out, sd, version=MODELS[stem][0], data_type=fmt.lower(), file_version=file_version)
    written = out.read_bytes()
    assert written[:24] == original[:24]
    mine, theirs = _records(written), _records(original)
    assert [r[1] for r in mine] == [r[1] for r in theirs]
    for (head_a, key, data_a), (head_b, _, data_b) in zip(mine, theirs, strict=True):
        assert head_a == head_b, key
        if data_a != data_b:
            assert _is_decay(key), key
            ulps = np.abs(np.frombuffer(data_a, "<i4").astype(np.int64) - np.frombuffer(data_b, "<i4"))
            assert ulps.max() <= 1, key
    if MODELS[stem][0] in ("5.1", "7"):  # no decay roundoff in these two (v7: no arithmetic at all)
        assert written == original


def test_fp16_write_round_trip(tmp_path: Path) -> None:
    _, sd = read_rwkvcpp(fixture("tiny-rwkv-5v2-730K-FP32.bin"))
    out = tmp_path / "half.bin"
    write_rwkvcpp(out, sd, version="5.2", data_type="fp16")
    header, back = read_rwkvcpp(out)
    assert header.data_type == 1
    for key, t in sd.items():
        atol = 1e-6 if _is_decay(key) else 0.0  # see test_fp32_round_trip
        assert ((back[key] - t).abs() <= t.abs() * FP16_REL + FP16_SUBNORMAL + atol).all(), key


def test_v6_round_trip_is_exact(tmp_path: Path) -> None:
    _, sd = read_rwkvcpp(fixture("tiny-rwkv-6v0-3m-Q5_1.bin"))
    out = tmp_path / "v6.bin"
    write_rwkvcpp(out, sd, version="6")
    _, back = read_rwkvcpp(out)
    assert list(back) == list(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    _, raw = read_rwkvcpp_raw(out)
    assert tuple(raw["blocks.0.att.time_decay"].shape) == (16, 8, 1)  # the converter's (H, N, 1)
    assert tuple(raw["blocks.0.att.time_maa_w2"].shape) == (5, 128, 32)


def test_writer_accepts_any_float_dtype_and_flat_vectors(tmp_path: Path) -> None:
    path = fixture("tiny-rwkv-7v0-834K-FP32.bin")
    _, sd = read_rwkvcpp(path)
    flat = {k: (t.reshape(-1) if t.dim() == 3 else t).double() for k, t in sd.items()}  # (C,), float64
    out = tmp_path / "flat.bin"
    write_rwkvcpp(out, flat, version="7")
    assert out.read_bytes() == path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["flat.bin"]  # the temporary file is gone


def test_layout_functions_invert_each_other() -> None:
    """Random BlinkDL v5.2 tensors through the converter's transforms and back: only the decay loses
    precision, by about ulp(x) / (x |log x|) with x = exp(-exp(w)); for w in [-3, 1] that is < 2e-6."""
    gen = torch.Generator().manual_seed(0)
    sd = {
        "emb.weight": torch.randn(16, 8, generator=gen),
        "blocks.0.ln1.weight": torch.randn(8, generator=gen),
        "blocks.0.att.ln_x.weight": torch.randn(8, generator=gen),
        "blocks.0.att.gate.weight": torch.randn(8, 8, generator=gen),
        "blocks.0.att.time_mix_k": torch.rand(1, 1, 8, generator=gen),
        "blocks.0.att.time_decay": torch.rand(2, 4, generator=gen) * 4 - 3,  # (H, N)
        "blocks.0.att.time_faaaa": torch.randn(2, 4, generator=gen),
    }
    stored = to_rwkvcpp_layout(sd, "5.2")
    assert tuple(stored["blocks.0.att.time_decay"].shape) == (2, 4, 1)
    assert tuple(stored["blocks.0.att.time_mix_k"].shape) == (8,)
    back = from_rwkvcpp_layout(stored, "5.2")
    for key, t in sd.items():
        torch.testing.assert_close(back[key], t, rtol=0, atol=2e-6 if _is_decay(key) else 0.0)


# --- synthetic quantized files ---------------------------------------------------------------


def _file(
    tensors: list[tuple[str, tuple[int, ...], int, bytes]], *, version: int = 101, data_type: int = 0
) -> bytes:
    """An rwkv.cpp file from (key, PyTorch shape, data type, raw data) records."""
    out = struct.pack("<6i", 0x67676D66, version, 256, 64, 1, data_type)
    for key, shape, dtype, data in tensors:
        k = key.encode()
        out += struct.pack(f"<3i{len(shape)}i", len(shape), len(k), dtype, *reversed(shape)) + k + data
    return out


def _nibbles(q: np.ndarray) -> bytes:
    """Byte j: value j in the low nibble, value j + 16 in the high nibble."""
    return bytes(((q[:16] & 0xF) | ((q[16:] & 0xF) << 4)).astype(np.uint8))


def _high_bits(q: np.ndarray) -> bytes:
    """Fifth bit of value j -> bit j of a little-endian uint32."""
    return struct.pack("<I", sum(((int(v) >> 4) & 1) << j for j, v in enumerate(q)))


def _encode(fmt: str, q: np.ndarray, d: float, m: float) -> bytes:
    """One 32-value block in the documented ggml layout (built by hand, one block at a time)."""
    if fmt == "Q4_0":
        return struct.pack("<e", d) + _nibbles(q)
    if fmt == "Q4_1":
        return struct.pack("<ee", d, m) + _nibbles(q)
    if fmt == "Q5_0":
        return struct.pack("<e", d) + _high_bits(q) + _nibbles(q)
    if fmt == "Q5_1":
        return struct.pack("<ee", d, m) + _high_bits(q) + _nibbles(q)
    return struct.pack("<e", d) + q.astype(np.int8).tobytes()  # Q8_0


# fmt -> (data type id, q range, value of q)
QUANT = {
    "Q4_0": (2, (0, 16), lambda q, d, m: d * (q - 8)),
    "Q4_1": (3, (0, 16), lambda q, d, m: d * q + m),
    "Q5_0": (7, (0, 32), lambda q, d, m: d * (q - 16)),
    "Q5_1": (8, (0, 32), lambda q, d, m: d * q + m),
    "Q8_0": (9, (-128, 128), lambda q, d, m: d * q),
}


@pytest.mark.parametrize("fmt", sorted(QUANT))
def test_synthetic_quantized_tensor(fmt: str, tmp_path: Path) -> None:
    dtype, (lo, hi), value = QUANT[fmt]
    rng = np.random.default_rng(7)
    scales = [(0.5, -1.5), (0.125, 2.0), (2.0, 0.25), (0.0078125, -0.5)]  # exact in fp16
    blocks, expected = b"", []
    for d, m in scales:  # 4 blocks: a (2, 64) tensor, ggml rows of 64
        q = rng.integers(lo, hi, size=32)
        blocks += _encode(fmt, q, d, m)
        expected.append(value(q.astype(np.float64), d, m))
    path = tmp_path / f"{fmt}.bin"
    path.write_bytes(_file([("blocks.0.att.key.weight", (2, 64), dtype, blocks)], data_type=dtype))
    header, tensors = read_rwkvcpp_raw(path)
    assert header.data_type_name == fmt
    want = torch.tensor(np.concatenate(expected), dtype=torch.float32).reshape(2, 64)
    assert torch.equal(tensors["blocks.0.att.key.weight"], want)


# --- bad input ---------------------------------------------------------------------------------


def _valid() -> bytes:
    return _file(
        [("emb.weight", (256, 64), 0, bytes(256 * 64 * 4)), ("blocks.0.ln1.weight", (64,), 0, bytes(256))]
    )


def _tensor_head(dims: int, key_len: int, dtype: int) -> bytes:
    return struct.pack("<3i", dims, key_len, dtype)


BAD_FILES = {
    "shorter than the header": lambda: _valid()[:10],
    "wrong magic": lambda: b"GGUF" + _valid()[4:],
    "version 99": lambda: _valid()[:4] + struct.pack("<i", 99) + _valid()[8:],
    "header data type 5": lambda: _valid()[:20] + struct.pack("<i", 5) + _valid()[24:],
    "tensor data type 5": lambda: _file([("emb.weight", (2, 32), 5, bytes(64))]),
    "tensor data type 42": lambda: _file([("emb.weight", (2, 32), 42, bytes(64))]),
    "quantized in version 100": lambda: _file(
        [("blocks.0.att.key.weight", (1, 32), 7, bytes(22))], version=100
    ),
    "truncated data": lambda: _valid()[:-3],
    "truncated tensor header": lambda: _valid() + _tensor_head(1, 4, 0)[:8],
    "absurd dim count": lambda: _valid() + _tensor_head(9, 4, 0) + bytes(64),
    "negative dim": lambda: _valid() + _tensor_head(1, 4, 0) + struct.pack("<i", -5) + b"abcd",
    "huge dims": lambda: _valid() + _tensor_head(3, 4, 0) + struct.pack("<3i", *[1 << 30] * 3) + b"abcd",
    "absurd key length": lambda: _valid() + _tensor_head(1, 1 << 30, 0) + struct.pack("<i", 1),
    "non-UTF-8 key": lambda: _valid() + _tensor_head(1, 2, 0) + struct.pack("<i", 1) + b"\xff\xfe" + bytes(4),
    "rows not a multiple of 32": lambda: _file([("blocks.0.att.key.weight", (2, 16), 9, bytes(34))]),
    "duplicate key": lambda: _valid() + _valid()[24:],
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_checkpoint_error_naming_the_file(case: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(BAD_FILES[case]())
    with pytest.raises(CheckpointError) as info:
        read_rwkvcpp_raw(path)
    assert str(path) in str(info.value)


def test_wrongly_shaped_tensor_is_a_checkpoint_error(tmp_path: Path) -> None:
    """A v7 low-rank matrix stored 1-D cannot be transposed back: say so, no torch traceback."""
    path = tmp_path / "v7.bin"
    keys = [("emb.weight", (256, 64)), ("blocks.0.ln1.weight", (64,)), ("blocks.0.att.k_k", (1, 1, 64))]
    records = [(k, shape, 0, bytes(4 * int(np.prod(shape)))) for k, shape in keys]
    path.write_bytes(_file([*records, ("blocks.0.att.w1", (64,), 0, bytes(256))]))
    with pytest.raises(CheckpointError, match="w1") as info:
        read_rwkvcpp(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.bin"
    with pytest.raises(CheckpointError, match="no such file") as info:
        read_rwkvcpp(path)
    assert str(path) in str(info.value)
    assert not is_rwkvcpp_file(path)


@pytest.mark.parametrize("keep", [10, 24, 30, 5000, -1])
def test_truncated_fixture(keep: int, tmp_path: Path) -> None:
    data = fixture("tiny-rwkv-4v0-660K-Q5_1.bin").read_bytes()
    path = tmp_path / "cut.bin"
    path.write_bytes(data[:keep])
    if keep == 24:  # just the header: a valid file with no tensors, but no version can be told
        with pytest.raises(CheckpointError, match="RWKV version") as info:
            read_rwkvcpp(path)
    else:
        with pytest.raises(CheckpointError, match=r"shorter|truncated") as info:
            read_rwkvcpp(path)
    assert str(path) in str(info.value)


def test_is_rwkvcpp_file_checks_the_magic(tmp_path: Path) -> None:
    good, bad, short = tmp_path / "good.bin", tmp_path / "bad.bin", tmp_path / "short.bin"
    good.write_bytes(_valid())
    bad.write_bytes(b"PK\x03\x04" + bytes(20))
    short.write_bytes(b"fm")
    assert is_rwkvcpp_file(good)
    assert not is_rwkvcpp_file(bad)
    assert not is_rwkvcpp_file(short)


def test_writer_refuses_mismatched_version_and_type(tmp_path: Path) -> None:
    sd = {
        "emb.weight": torch.zeros(4, 2),
        "blocks.0.ln1.weight": torch.ones(2),
        "blocks.0.att.time_first": torch.zeros(2),
        "blocks.0.att.time_decay": torch.zeros(2),
    }
    out = tmp_path / "x.bin"
    with pytest.raises(CheckpointError, match="v4"):
        write_rwkvcpp(out, sd, version="5.2")
    with pytest.raises(CheckpointError, match="data_type"):
        write_rwkvcpp(out, sd, version="4", data_type="q5_1")
    assert not out.exists()
    write_rwkvcpp(out, sd, version="4")
    assert read_rwkvcpp(out)[0] == RwkvCppHeader(101, 4, 2, 1, 0)


def test_rwkvcpp_version_names() -> None:
    """rwkv.cpp's names for what rwkvkit.models.detect_version finds (RWKV-5 split by its gate)."""
    base = ["emb.weight", "blocks.0.ln1.weight"]
    assert rwkvcpp_version([*base, "blocks.0.att.time_first", "blocks.0.att.time_decay"]) == "4"
    assert rwkvcpp_version([*base, "blocks.0.att.ln_x.weight", "blocks.0.att.time_first"]) == "5.1"
    assert rwkvcpp_version([*base, "blocks.0.att.ln_x.weight", "blocks.0.att.gate.weight"]) == "5.2"
    assert rwkvcpp_version([*base, "blocks.0.att.ln_x.weight", "blocks.0.att.time_maa_x"]) == "6"
    assert rwkvcpp_version([*base, "blocks.0.att.ln_x.weight", "blocks.0.att.k_k", "blocks.0.att.x_r"]) == "7"
    with pytest.raises(CheckpointError, match=r"x\.bin: the keys match no RWKV version"):
        rwkvcpp_version(base, path="x.bin")
    with pytest.raises(CheckpointError, match="unknown RWKV version 'gpt'"):
        rwkvcpp_version([*base, "wpe.weight", "blocks.0.attn.qkv.weight"])


# --- rwkv.cpp's v5, v6 and v7 files through load_model: rwkv.cpp's own logits ---------------------


PROMPT = [34, 105, 110]  # '"', 'i', 'n'
# (stem, format, model class, bound)
LOGIT_CASES = [
    ("tiny-rwkv-5v1-730K", "FP32", "RWKV5", 1e-5),
    ("tiny-rwkv-5v1-730K", "FP16", "RWKV5", 6e-3),
    ("tiny-rwkv-5v1-730K", "Q5_0", "RWKV5", 2.2),
    ("tiny-rwkv-5v1-730K", "Q5_1", "RWKV5", 0.35),
    ("tiny-rwkv-5v2-730K", "FP32", "RWKV5", 1e-5),
    ("tiny-rwkv-5v2-730K", "FP16", "RWKV5", 3.2e-3),
    ("tiny-rwkv-5v2-730K", "Q5_0", "RWKV5", 0.65),
    ("tiny-rwkv-5v2-730K", "Q5_1", "RWKV5", 0.47),
    ("tiny-rwkv-6v0-3m", "Q5_0", "RWKV6", 0.2),
    ("tiny-rwkv-6v0-3m", "Q5_1", "RWKV6", 0.1),
    ("tiny-rwkv-7v0-834K", "FP32", "RWKV7", 1e-5),
    ("tiny-rwkv-7v0-834K", "FP16", "RWKV7", 1e-5),  # v7's FP16 files keep the sensitive tensors FP32
    ("tiny-rwkv-7v0-834K", "Q5_0", "RWKV7", 5e-3),
    ("tiny-rwkv-7v0-834K", "Q5_1", "RWKV7", 5.5e-3),
]


@pytest.mark.parametrize(
    ("stem", "fmt", "cls", "bound"), LOGIT_CASES, ids=[f"{c[0][10:13]}-{c[1]}" for c in LOGIT_CASES]
)
def test_fixture_reproduces_expected_logits(
    fixtures_dir: Path, stem: str, fmt: str, cls: str, bound: float
) -> None:
    path = fixtures_dir / f"{stem}-{fmt}.bin"
    expected_path = fixtures_dir / f"expected-logits-{stem.removeprefix('tiny-rwkv-')}.bin"
    if not path.exists() or not expected_path.exists():
        pytest.skip(f"{path.name} or {expected_path.name} is absent")
    expected = torch.from_numpy(np.fromfile(expected_path, dtype="<f4"))
    model = rwkvkit.load_model(path)
    assert type(model).__name__ == cls
    with torch.no_grad():
        whole, _ = model(PROMPT)
        state = None
        for token in PROMPT:
            last, state = model([token], state)
    assert (whole[0, -1] - expected).abs().max().item() <= bound
    assert (last[0, -1] - expected).abs().max().item() <= bound


def test_v5_files_run_with_rwkvcpp_eps(fixtures_dir: Path) -> None:
    """rwkv.cpp's eps is what makes its v5 logits come out; BlinkDL's misses them by ~1."""
    path = fixtures_dir / "tiny-rwkv-5v2-730K-FP32.bin"
    if not path.exists():
        pytest.skip(f"{path.name} is absent")
    model = rwkvkit.load_model(path)
    assert model.config.ln_x_eps == 1e-5
    raw = rwkvkit.checkpoint.read_checkpoint(path)
    raw.config_overrides = {}
    blinkdl_eps = rwkvkit.checkpoint.build_model(raw)
    assert blinkdl_eps.config.ln_x_eps == 64e-5
    expected = torch.from_numpy(np.fromfile(fixtures_dir / "expected-logits-5v2-730K.bin", dtype="<f4"))
    with torch.no_grad():
        assert (blinkdl_eps(PROMPT)[0][0, -1] - expected).abs().max() > 0.1
