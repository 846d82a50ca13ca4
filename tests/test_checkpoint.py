"""Loading every format (detected from content), the tokenizer a checkpoint names, and refusing bad
files clearly. Converting between formats: test_convert.py."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import rwkvkit
from rwkvkit.checkpoint import tokenizer_for_model, tokenizer_name_for_model
from rwkvkit.convert import convert
from rwkvkit.errors import CheckpointError, TokenizerError, UnsupportedVersionError
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.testing import random_rwkv4_state_dict

PROMPT = [34, 105, 110]  # '"', 'i', 'n': the rwkv.cpp test prompt


def _logits(path: Path | str, tokens: list[int], **kw: object) -> torch.Tensor:
    model = rwkvkit.load_model(path, **kw)
    with torch.no_grad():
        return model(tokens)[0][0]


# ---- rwkv.cpp conformance -------------------------------------------------------------------

# Measured with this implementation (max abs diff to the expected logits): FP32 ~2.6e-6 (the
# file stores -exp(time_decay), so undoing it costs an ulp), FP16 ~1.6e-3 (10-bit mantissas).
# Quantized files are compared with the FP32 file's logits instead: Q5 keeps ~5 bits per weight.
V4_TOLERANCES = {"FP32": 1e-4, "FP16": 5e-3}
V4_QUANT_TOLERANCES = {"Q5_0": 0.5, "Q5_1": 0.3}


@pytest.mark.parametrize("kind", ["FP32", "FP16"])
def test_rwkvcpp_v4_fixture_reproduces_expected_logits(fixtures_dir: Path, kind: str) -> None:
    expected = torch.from_numpy(np.fromfile(fixtures_dir / "expected-logits-4v0-660K.bin", dtype="<f4"))
    path = fixtures_dir / f"tiny-rwkv-4v0-660K-{kind}.bin"
    whole = _logits(path, PROMPT)
    model = rwkvkit.load_model(path)
    state = None
    with torch.no_grad():
        for t in PROMPT:  # one by one, as rwkv.cpp's test feeds them
            out, state = model([t], state)
    for got in (whole[-1], out[0, -1]):
        assert (got - expected).abs().max() <= V4_TOLERANCES[kind]


@pytest.mark.parametrize("kind", ["Q5_0", "Q5_1"])
def test_rwkvcpp_v4_quantized_fixture_close_to_fp32(fixtures_dir: Path, kind: str) -> None:
    reference = _logits(fixtures_dir / "tiny-rwkv-4v0-660K-FP32.bin", PROMPT)
    got = _logits(fixtures_dir / f"tiny-rwkv-4v0-660K-{kind}.bin", PROMPT)
    diff = (got - reference).abs().max().item()
    assert 0 < diff <= V4_QUANT_TOLERANCES[kind], diff  # > 0: it really was quantized


def test_rwkvcpp_newer_versions_are_refused_clearly(fixtures_dir: Path) -> None:
    try:
        rwkvkit.load_model(fixtures_dir / "tiny-rwkv-7v0-834K-FP32.bin")
    except UnsupportedVersionError as e:
        assert "RWKV-7" in str(e) and "tiny-rwkv-7v0-834K-FP32.bin" in str(e)
    # (once RWKV-7 is supported the load simply succeeds)


# ---- conversion round trips -----------------------------------------------------------------


def test_load_in_bf16_keeps_decay_in_fp32(small_pth: Path) -> None:
    model = rwkvkit.load_model(small_pth, dtype=torch.bfloat16)
    assert model.blocks[0].att.key.weight.dtype == torch.bfloat16
    assert model.blocks[0].att.time_decay.dtype == torch.float32
    with torch.no_grad():
        logits, _ = model([1, 2, 3])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_time_mix_shapes_from_other_trainers_are_accepted(tmp_path: Path, small_config: RWKV4Config) -> None:
    sd = random_rwkv4_state_dict(small_config)
    flat = {k: (v.reshape(-1) if ".time_" in k else v) for k, v in sd.items()}  # (C,) instead of (1, 1, C)
    torch.save(flat, tmp_path / "flat.pth")
    torch.save(sd, tmp_path / "orig.pth")
    assert torch.equal(_logits(tmp_path / "flat.pth", [1, 2]), _logits(tmp_path / "orig.pth", [1, 2]))


# ---- bad input --------------------------------------------------------------------------------


def _expect_error(path: Path, *fragments: str) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        rwkvkit.load_model(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope.pth", "no such file")


def test_truncated_files(tmp_path: Path, small_pth: Path) -> None:
    data = small_pth.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path / "cut.pth", "truncated")
    convert(small_pth, tmp_path / "m.safetensors", "safetensors")
    st = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(st[: len(st) - 100])
    _expect_error(tmp_path / "cut.safetensors", "truncated")
    (tmp_path / "tiny.bin").write_bytes(b"\x01\x02")
    _expect_error(tmp_path / "tiny.bin", "truncated")


def test_truncated_rwkvcpp(tmp_path: Path, fixtures_dir: Path) -> None:
    data = (fixtures_dir / "tiny-rwkv-4v0-660K-FP16.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:100_000])
    _expect_error(tmp_path / "cut.bin")


def test_wrong_magic_and_unknown_version(tmp_path: Path, fixtures_dir: Path) -> None:
    (tmp_path / "junk.bin").write_bytes(b"JUNK" + bytes(100))
    _expect_error(tmp_path / "junk.bin", "unrecognised file format")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + bytes(100))  # GGUF's magic, then nothing valid
    _expect_error(tmp_path / "junk.gguf", "not a readable GGUF file")
    data = bytearray((fixtures_dir / "tiny-rwkv-4v0-660K-FP16.bin").read_bytes())
    data[4:8] = struct.pack("<i", 99)
    (tmp_path / "v99.bin").write_bytes(bytes(data))
    _expect_error(tmp_path / "v99.bin", "99")


def test_unsupported_rwkv_version_by_keys(tmp_path: Path) -> None:
    """RWKV-5/6/7 load now; a pre-release RWKV-7 layout and an incomplete v5 file get clear errors."""
    draft_v7 = {"emb.weight": torch.zeros(10, 8), "blocks.0.att.time_aaaaa": torch.zeros(1, 1, 8)}
    torch.save(draft_v7, tmp_path / "v7draft.pth")
    err = _expect_error(tmp_path / "v7draft.pth", "pre-release RWKV-7")
    assert isinstance(err, UnsupportedVersionError)
    partial_v5 = {
        "emb.weight": torch.zeros(10, 8),
        "blocks.0.att.ln_x.weight": torch.ones(8),
        "blocks.0.att.gate.weight": torch.zeros(8, 8),
    }
    torch.save(partial_v5, tmp_path / "v5.pth")
    _expect_error(tmp_path / "v5.pth", "cannot infer the model's shape")


def test_missing_extra_misshaped_and_nan_keys(tmp_path: Path, small_config: RWKV4Config) -> None:
    def save(name: str, sd: dict[str, torch.Tensor]) -> Path:
        torch.save(sd, tmp_path / name)
        return tmp_path / name

    sd = random_rwkv4_state_dict(small_config)
    _expect_error(
        save("missing.pth", {k: v for k, v in sd.items() if k != "blocks.1.att.output.weight"}),
        "missing keys",
        "blocks.1.att.output.weight",
    )
    _expect_error(
        save("extra.pth", {**sd, "blocks.0.att.bonus": torch.zeros(3)}),
        "unexpected keys",
        "blocks.0.att.bonus",
    )
    bad = dict(sd)
    bad["blocks.2.ffn.value.weight"] = torch.zeros(40, 71)
    _expect_error(save("shape.pth", bad), "blocks.2.ffn.value.weight", "(40, 71)", "(40, 72)")
    nan = dict(sd)
    nan["blocks.1.att.key.weight"] = sd["blocks.1.att.key.weight"].clone()
    nan["blocks.1.att.key.weight"][3, 4] = float("nan")
    _expect_error(save("nan.pth", nan), "blocks.1.att.key.weight", "NaN")
    _expect_error(save("notdict.pth", [torch.zeros(2)]), "state dict")  # type: ignore[dict-item]


class _RunsCode:
    """A pickle payload that would create a file if unpickling ran it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"emb.weight": torch.zeros(2, 2), "payload": _RunsCode(marker)}, path)
    _expect_error(path, "refused to load")
    assert not marker.exists()
    legacy = tmp_path / "evil-legacy.pth"
    with open(legacy, "wb") as f:
        pickle.dump({"payload": _RunsCode(marker)}, f, protocol=2)
    _expect_error(legacy)
    assert not marker.exists()


def test_not_an_rwkv_hf_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _expect_error(tmp_path, "llama")


# ---- the tokenizer a checkpoint names -------------------------------------------------------


def test_tokenizer_from_metadata_then_vocab_size(tmp_path: Path) -> None:
    sd = {k: v.contiguous() for k, v in random_rwkv4_state_dict(RWKV4Config(97, 1, 16, 32)).items()}
    tagged, bare = tmp_path / "tagged.safetensors", tmp_path / "bare.safetensors"
    save_file(sd, str(tagged), metadata={"format": "pt", "rwkvkit_tokenizer": "byte"})
    save_file(sd, str(bare), metadata={"format": "pt"})
    assert tokenizer_name_for_model(rwkvkit.load_model(tagged)) == "byte"
    with pytest.raises(TokenizerError, match="--tokenizer"):
        tokenizer_name_for_model(rwkvkit.load_model(bare))  # 97 tokens: no known vocabulary
    sd256 = {k: v.contiguous() for k, v in random_rwkv4_state_dict(RWKV4Config(256, 1, 16, 32)).items()}
    save_file(sd256, str(bare), metadata={"format": "pt", "rwkvkit_config": json.dumps({"version": "4"})})
    assert tokenizer_name_for_model(rwkvkit.load_model(bare)) == "byte"


def test_tokenizer_for_model_checks_the_vocabulary(tmp_path: Path) -> None:
    sd = {k: v.contiguous() for k, v in random_rwkv4_state_dict(RWKV4Config(256, 1, 16, 32)).items()}
    save_file(sd, str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    model = rwkvkit.load_model(tmp_path / "m.safetensors")
    assert tokenizer_for_model(model).name == "byte"  # from the vocabulary size
    assert tokenizer_for_model(model, "byte").name == "byte"
    with pytest.raises(TokenizerError, match="the world tokenizer has 65536 tokens but the model only 256"):
        tokenizer_for_model(model, "world")


def test_hf_folder_weight_files_must_be_unambiguous(tmp_path: Path, small_pth: Path) -> None:
    from safetensors.torch import load_file

    hf = convert(small_pth, tmp_path / "hf", "hf")
    want = rwkvkit.load_model(hf)([1, 2, 3])[0]
    save_file({"x": torch.ones(1)}, str(hf / "stray.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"several weight files .*'model\.safetensors', 'stray\.safetensors'"
    ):
        rwkvkit.load_model(hf)
    (hf / "stray.safetensors").unlink()
    # sharded, with the index transformers writes: loads the same model
    sd = load_file(hf / "model.safetensors")
    names = sorted(sd)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    for file, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(hf / file))
    (hf / "model.safetensors").unlink()
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    assert torch.equal(rwkvkit.load_model(hf)([1, 2, 3])[0], want)
    (hf / "model.safetensors.index.json").unlink()  # numbered shards that are all there: fine too
    assert torch.equal(rwkvkit.load_model(hf)([1, 2, 3])[0], want)
    (hf / "model-00002-of-00002.safetensors").rename(hf / "model-00002-of-00003.safetensors")
    with pytest.raises(CheckpointError, match="several weight files"):
        rwkvkit.load_model(hf)


def test_safetensors_that_look_like_a_pickle_are_still_safetensors(tmp_path: Path) -> None:
    """A header of 640 + k bytes begins with b"\\x80\\x02", a pickle's first two bytes."""
    from rwkvkit.checkpoint import sniff_format

    for pad in range(40):
        path = tmp_path / "m.safetensors"
        save_file({"a" * pad: torch.ones(1)}, str(path), metadata={"x": "y" * 560})
        if path.read_bytes()[:2] == b"\x80\x02":
            assert sniff_format(path) == "safetensors"
            return
    pytest.fail("no header length came out as 0x02xx")
