"""GGUF (rwkvkit/formats/gguf.py) against llama.cpp's own converter, which is pure Python and runs here
without llama.cpp itself (tests/llama_cpp_tools.py finds it): its conversions of random World models
load in rwkvkit with the original weights' logits, and the files rwkvkit writes hold the same tensors,
byte for byte, as its own. llama.cpp running the files: test_gguf_llama_cpp.py. Hostile files:
test_gguf_bad_input.py.

The RWKV-6 conversions here are "rescaled" (world_models.py): their files hold layer 2's output
matrices halved, which reading must undo.

Tolerances for the lossy types. A weight rounded to a type with relative step u (half an ulp of the
largest value it shares a scale with: F16 2^-11, BF16 2^-8, Q8_0 1/127 of its block's largest, Q5_x
1/31 or 1/15... of the block's range) carries a relative error up to u/2; a logit sums such errors
over every matrix the signal passes, so its error is a multiple of u times the logits' scale. The
bound used is ``K_TOL * u * std(logits)`` with K_TOL = 48, about twice the worst ratio measured on
these models (max |error| / (u std), RWKV-6 and RWKV-7: F16 8.1 and 6.1, BF16 8.7 and 5.8, Q8_0
10.8 and 10.0, Q4_0 12.1 and 8.2, Q4_1 24.5 and 15.4, Q5_0 12.6 and 9.8, Q5_1 21.8 and 17.6; the
numbers per case are in the assertion messages).
"""

from __future__ import annotations

import dataclasses
import re

import gguf
import numpy as np
import pytest
import torch
from world_models import RESCALE_EVERY, logits

import rwkvkit
from rwkvkit.chat import ChatTemplate
from rwkvkit.checkpoint import tokenizer_name_for_model
from rwkvkit.convert import convert
from rwkvkit.errors import CheckpointError, RwkvkitError
from rwkvkit.formats.gguf import (
    escape_token,
    from_gguf_layout,
    gguf_vocabulary,
    open_gguf,
    to_gguf_layout,
    unescape_token,
    write_gguf,
)
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.testing import random_rwkv5_state_dict, random_rwkv6_state_dict, random_rwkv7_state_dict
from rwkvkit.tokenizer import load_tokenizer

K_TOL = 48
STEP = {"fp16": 2.0**-11, "bf16": 2.0**-8, "q8_0": 1 / 127, "q5_0": 1 / 15, "q5_1": 1 / 31, "q4_0": 1 / 7,
        "q4_1": 1 / 15}  # fmt: skip
SMALL = {
    "6": (RWKV6Config(vocab_size=70, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, mix_lora=4, decay_lora=6),
          random_rwkv6_state_dict),
    "7": (RWKV7Config(vocab_size=70, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, decay_lora=4, iclr_lora=6,
                      value_lora=4, gate_lora=8), random_rwkv7_state_dict),
}  # fmt: skip


def assert_within_step(got: torch.Tensor, want: torch.Tensor, dtype: str) -> None:
    err = (got - want).abs().max().item()
    scale = STEP[dtype] * want.std().item()
    assert err <= K_TOL * scale, f"{dtype}: max error {err:.3g} = {err / scale:.1f} u std (bound {K_TOL})"


# ---- the flat map and the layouts


@pytest.mark.parametrize("version", ["6", "7"])
def test_names_are_in_llama_cpps_tensor_list(version: str) -> None:
    """Every name written is one gguf-py lists for the architecture (constants.MODEL_TENSORS)."""
    config, make = SMALL[version]
    arch = {"6": gguf.MODEL_ARCH.RWKV6, "7": gguf.MODEL_ARCH.RWKV7}[version]
    allowed = {gguf.TENSOR_NAMES[t].format(bid=0) for t in gguf.MODEL_TENSORS[arch]}
    names = {
        re.sub(r"^blk\.\d+\.", "blk.0.", n).rsplit(".", 1)[0] for n in to_gguf_layout(make(config), version)
    }
    assert names <= allowed, names - allowed


@pytest.mark.parametrize("version", ["6", "7"])
def test_layouts_round_trip(version: str) -> None:
    config, make = SMALL[version]
    sd = make(config, seed=3)
    out = to_gguf_layout(sd, version)
    C, D = config.n_embd, config.decay_lora
    if version == "7":
        assert out["blk.0.time_mix_lerp_fused.weight"].shape == (6, 1, 1, C)
        assert out["blk.1.time_mix_w1.weight"].shape == (D, C)  # transposed: (out, in)
        assert torch.equal(out["blk.0.time_mix_v1.weight"], out["blk.0.time_mix_a1.weight"])  # placeholders
        assert torch.equal(
            out["blk.1.time_mix_lerp_fused.weight"][1].flatten(), sd["blocks.1.att.x_w"].flatten()
        )
    else:
        assert out["blk.0.time_mix_lerp_fused.weight"].shape == (5, 1, 1, C)
        assert out["blk.0.time_mix_w2.weight"].shape == (5, C, config.mix_lora)
        assert torch.equal(
            out["blk.1.time_mix_lerp_fused.weight"][3].flatten(), sd["blocks.1.att.time_maa_r"].flatten()
        )
    back = from_gguf_layout(out, version, config.head_size)
    skipped = {f"blocks.0.att.v{i}" for i in "012"} if version == "7" else set()
    assert set(back) == set(sd) - skipped
    for name, t in back.items():
        assert torch.equal(t.reshape(sd[name].shape), sd[name]), name


def test_rescaled_rwkv6_matrices_are_multiplied_back() -> None:
    config, make = SMALL["6"]
    sd = make(config, seed=4)
    out = to_gguf_layout(sd, "6")
    out["blk.1.time_mix_output.weight"] = out["blk.1.time_mix_output.weight"] / 2
    out["blk.1.channel_mix_value.weight"] = out["blk.1.channel_mix_value.weight"] / 2
    back = from_gguf_layout(out, "6", config.head_size, rescale_every=1)
    assert torch.equal(back["blocks.1.att.output.weight"], sd["blocks.1.att.output.weight"])
    assert torch.equal(back["blocks.0.ffn.value.weight"], sd["blocks.0.ffn.value.weight"])


def test_token_escaping_round_trips_the_world_vocabulary() -> None:
    """llama.cpp's rwkv tokenizer stores each token escaped (repr of its bytes); every World token,
    and the bytes that need escaping, come back exactly."""
    vocab = load_tokenizer("world").vocab
    tricky = [b"\\", b"'", b'"', b"'\"", b"\\x41", b"\n\t\r", bytes(range(256)), "é€😀".encode()]
    for token in [*vocab.values(), *tricky]:
        assert unescape_token(escape_token(token).encode()) == token
    assert escape_token(b"\xe9\n") == "\\xe9\\n"


# ---- rwkvkit's own files


@pytest.mark.parametrize("version", ["6", "7"])
def test_written_gguf_loads_with_the_same_logits_and_tokenizer(tmp_path, world_models, version: str) -> None:
    out = convert(world_models[version], tmp_path / "m.gguf", "gguf")
    assert torch.equal(logits(out), logits(world_models[version]))
    model = rwkvkit.load_model(out)
    want = rwkvkit.load_model(world_models[version]).config
    if version == "7":  # layer 0's unused value-residual LoRA is not read back from llama.cpp's placeholders
        want = dataclasses.replace(want, layer0_value_lora=False)
    assert model.config == want
    assert tokenizer_name_for_model(model) == "world"  # the file's vocabulary is the bundled one
    reader = open_gguf(out)
    template = bytes(reader.fields["tokenizer.chat_template"].parts[-1]).decode()
    assert template == ChatTemplate().jinja()


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_lossy_types_stay_within_their_rounding(tmp_path, world_models, dtype: str) -> None:
    """Our writer's lossy types (the four of `convert --dtype`, and the legacy quants write_gguf
    also makes with the gguf package's reference rounding) load within the step bound."""
    src = world_models["7"]
    if dtype in ("fp16", "bf16", "q8_0"):
        out = convert(src, tmp_path / "m.gguf", "gguf", dtype)
    else:
        model = rwkvkit.checkpoint.build_model(rwkvkit.checkpoint.read_checkpoint(src))
        out = tmp_path / "m.gguf"
        write_gguf(
            out, model.state_dict(), model.config, dtype, load_tokenizer("world").vocab, chat_template=""
        )
    kinds = {t.tensor_type.name for t in open_gguf(out).tensors}
    assert {"F32", dtype.upper().replace("FP", "F")} <= kinds
    assert_within_step(logits(out), logits(src), dtype)


def test_custom_vocabulary_travels_in_the_file(tmp_path) -> None:
    """A model whose World-format vocabulary is not the bundled one: the GGUF carries it, and the
    tokenizer rwkvkit builds from the file encodes with it."""
    config = RWKV7Config(vocab_size=320, n_layer=1, n_embd=64, ffn_dim=64, head_size=64, decay_lora=32,
                         iclr_lora=32, value_lora=32, gate_lora=32)  # fmt: skip
    vocab = {i + 1: bytes([i]) for i in range(256)} | {257: b"hello", 258: b" world", 259: b"\\'\""}
    model = rwkvkit.models.RWKV7(config)
    model.load_state_dict(random_rwkv7_state_dict(config))
    path = tmp_path / "custom.gguf"
    write_gguf(path, model.state_dict(), config, "fp32", vocab, chat_template="")
    assert gguf_vocabulary(path) == vocab
    loaded = rwkvkit.load_model(path)
    name = tokenizer_name_for_model(loaded)
    assert name == str(path)
    tok = load_tokenizer(name)
    assert tok.encode("hello world") == [257, 258] and tok.decode([259]) == "\\'\""


# ---- llama.cpp's own conversions (its converter, pure Python)


@pytest.mark.parametrize(
    ("version", "dtype"),
    [("6", "fp32"), ("7", "fp32"), ("7", "q8_0"),
     pytest.param("6", "q8_0", marks=pytest.mark.slow), pytest.param("6", "fp16", marks=pytest.mark.slow),
     pytest.param("7", "fp16", marks=pytest.mark.slow), pytest.param("7", "bf16", marks=pytest.mark.slow)],
)  # fmt: skip
def test_llama_cpp_conversions_load_with_the_original_logits(
    llama_converted, world_models, version, dtype
) -> None:
    """f32: the original weights' logits within 1e-4 (measured: identical; RWKV-6's file has layer 2's
    output matrices halved by rescale_every, which reading undoes exactly); lossy types within the
    step bound."""
    path = llama_converted(version, dtype, rescaled=version == "6")
    got, want = logits(path), logits(world_models[version])
    if dtype == "fp32":
        assert (got - want).abs().max().item() <= 1e-4
    else:
        assert_within_step(got, want, dtype)
    assert tokenizer_name_for_model(rwkvkit.load_model(path)) == "world"


@pytest.mark.parametrize(
    ("version", "dtype"),
    [("6", "fp32"), ("7", "fp32"), ("7", "q8_0"),
     pytest.param("6", "q8_0", marks=pytest.mark.slow), pytest.param("7", "fp16", marks=pytest.mark.slow),
     pytest.param("7", "bf16", marks=pytest.mark.slow)],
)  # fmt: skip
def test_written_gguf_holds_llama_cpps_bytes(tmp_path, llama_converted, world_models, version, dtype) -> None:
    """`rwkvkit convert --to gguf` writes the tensors llama.cpp's converter writes for the same weights:
    same names, types, shapes and bytes (RWKV-6: but for the rescaled matrices, which llama.cpp's file
    holds divided by 2^(layer // rescale_every)); the metadata llama.cpp reads is the same too."""
    ours_path = convert(world_models[version], tmp_path / "ours.gguf", "gguf", dtype)
    ours = gguf.GGUFReader(ours_path)
    theirs = gguf.GGUFReader(llama_converted(version, dtype, rescaled=version == "6"))
    mine = {t.name: t for t in ours.tensors}
    assert set(mine) == {t.name for t in theirs.tensors}
    for t in theirs.tensors:
        m = mine[t.name]
        assert (m.tensor_type, list(m.shape)) == (t.tensor_type, list(t.shape)), t.name
        a, b = np.asarray(m.data), np.asarray(t.data)
        layer = int(t.name.split(".")[1]) if t.name.startswith("blk.") else 0
        if version == "6" and t.name.endswith(("time_mix_output.weight", "channel_mix_value.weight")):
            scale = 2.0 ** (layer // RESCALE_EVERY)
            if dtype == "fp32":
                b = b * scale
            elif scale != 1:
                continue  # re-quantized after the division: not comparable byte for byte
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), t.name
    skip = {"general.name", "general.size_label", "tokenizer.chat_template"}
    for key, field in theirs.fields.items():
        if key.startswith(("general.", "GGUF.")) and key not in ("general.architecture", "general.file_type"):
            continue
        if key in skip or (version == "6" and key.endswith("rescale_every_n_layers")):
            continue
        got = ours.fields[key]
        assert [bytes(got.parts[i]) for i in got.data] == [bytes(field.parts[i]) for i in field.data], key


# ---- what cannot be a GGUF


def test_convert_refuses_versions_llama_cpp_does_not_run(tmp_path) -> None:
    config = RWKV5Config(vocab_size=65536, n_layer=1, n_embd=32, ffn_dim=64, head_size=8)
    torch.save(random_rwkv5_state_dict(config), tmp_path / "v5.pth")
    with pytest.raises(RwkvkitError, match=r"RWKV-6 and RWKV-7 only.*RWKV-5"):
        convert(tmp_path / "v5.pth", tmp_path / "x.gguf", "gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_convert_refuses_a_model_without_the_world_tokenizer(tmp_path) -> None:
    config, make = SMALL["7"]
    torch.save(make(config), tmp_path / "small.pth")
    with pytest.raises(RwkvkitError, match="World tokenizer"):
        convert(tmp_path / "small.pth", tmp_path / "x.gguf", "gguf")


def test_q8_0_is_for_gguf_only(tmp_path, small_pth) -> None:
    with pytest.raises(RwkvkitError, match="GGUF file type"):
        convert(small_pth, tmp_path / "x.pth", "pth", dtype="q8_0")


def test_an_unsupported_architecture_is_named(tmp_path) -> None:
    w = gguf.GGUFWriter(tmp_path / "llama.gguf", "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(CheckpointError, match=r"llama\.gguf: this GGUF file holds a 'llama' model"):
        rwkvkit.load_model(tmp_path / "llama.gguf")


def test_generate_runs_a_gguf_file_with_its_own_tokenizer(tmp_path, world_models) -> None:
    """The command line on a GGUF file: the tokenizer comes from the file's metadata, and greedy
    text is the original checkpoint's."""
    from cli_run import rwkvkit_cli

    gguf_path = convert(world_models["7"], tmp_path / "m.gguf", "gguf")
    args = ["--prompt", "The capital of France is", "--max-tokens", "6", "--temperature", "0", "--seed", "1"]
    from_gguf = rwkvkit_cli("generate", "--model", str(gguf_path), *args).stdout
    from_pth = rwkvkit_cli("generate", "--model", str(world_models["7"]), *args).stdout
    assert from_gguf == from_pth and from_gguf.strip()


def test_a_gguf_file_is_known_by_its_content_not_its_name(tmp_path, world_models) -> None:
    path = convert(world_models["6"], tmp_path / "model.bin", "gguf")
    model = rwkvkit.load_model(path)
    assert model.source.format == "gguf"
    config = RWKV7Config(vocab_size=300, n_layer=1, n_embd=64, ffn_dim=64, head_size=64, decay_lora=32,
                         iclr_lora=32, value_lora=32, gate_lora=32)  # fmt: skip
    custom = rwkvkit.models.RWKV7(config)
    custom.load_state_dict(random_rwkv7_state_dict(config))
    vocab = {i + 1: bytes([i]) for i in range(256)} | {257: b"ab"}
    write_gguf(tmp_path / "custom.weights", custom.state_dict(), config, "fp32", vocab, chat_template="")
    assert load_tokenizer(tmp_path / "custom.weights").encode("abc") == [257, 100]
