"""LoRA through peft on every RWKV version: a fresh adapter changes nothing, merged weights equal
the adapted model, the files are PEFT's layout, an adapter is refused by another base, and
adapters served side by side share the base's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_rwkv7 import run_official_rwkv7
from tuned_models import VERSIONS, randomize_lora_, save_random, tokens

import rwkvkit
from rwkvkit.checkpoint import build_model, merged_checkpoint, read_checkpoint
from rwkvkit.errors import CheckpointError, RwkvkitError
from rwkvkit.statefile import ModelIdentity

pytest.importorskip("peft")
from rwkvkit.lora import (  # (peft is optional)
    BASE_KEY,
    CONFIG_FILE,
    WEIGHTS_FILE,
    LoraSettings,
    adapter_view,
    add_lora,
    apply_adapter,
    save_adapter,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# Merged (W + s B A, one matrix) against unmerged (W x + s B (A x)): float32 sums in another order.
MERGE_TOL = 1e-5
ADAPTED = {  # what the default targets adapt in each version
    "4": {"att.key", "att.value", "att.receptance", "att.output", "ffn.key", "ffn.value", "ffn.receptance"},
    "5": {"att.key", "att.value", "att.receptance", "att.output", "att.gate", "ffn.key", "ffn.value", "ffn.receptance"},
    "6": {"att.key", "att.value", "att.receptance", "att.output", "att.gate", "ffn.key", "ffn.value", "ffn.receptance"},
    "7": {"att.key", "att.value", "att.receptance", "att.output", "ffn.key", "ffn.value"},
}  # fmt: skip


def fresh(path: Path) -> torch.nn.Module:
    """The plain (trainable, un-optimised) model of a checkpoint, as fine-tuning loads it."""
    return build_model(read_checkpoint(path))


def make_adapter(base: Path, out: Path, seed: int = 0, **settings) -> Path:
    model = fresh(base)
    identity = ModelIdentity.of(model)
    peft_model = add_lora(model, LoraSettings(**settings))
    randomize_lora_(model, seed)
    return save_adapter(peft_model, out, identity)


@pytest.mark.parametrize("version", VERSIONS)
def test_fresh_adapter_is_the_base_and_adapts_the_projections(tmp_path: Path, version: str) -> None:
    base = save_random(version, tmp_path / "base.pth")
    model = fresh(base)
    ids = tokens(version, 19)
    with torch.no_grad():
        want = model(ids)[0]
        add_lora(model, LoraSettings(rank=4))
        got = model(ids)[0]
    assert torch.equal(got, want)  # B = 0: the update is exactly zero
    adapted = {
        n.split(".", 2)[2].rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n
    }
    assert adapted == ADAPTED[version]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


@pytest.mark.parametrize("version", VERSIONS)
def test_merged_equals_unmerged(tmp_path: Path, version: str) -> None:
    base = save_random(version, tmp_path / "base.pth", seed=1)
    adapter = make_adapter(base, tmp_path / "adapter", seed=2, rank=4, alpha=8)
    ids = tokens(version, 23, batch=2)
    unmerged = apply_adapter(fresh(base), adapter, merge=False)
    merged = rwkvkit.load_model(base, adapter=adapter)  # merged in float32, then the fast layers
    with torch.no_grad():
        want, want_state = unmerged(ids)
        got, got_state = merged(ids)
        plain = fresh(base)(ids)[0]
    assert (want - plain).abs().max() > 1e-2  # the adapter does change the model
    torch.testing.assert_close(got, want, atol=MERGE_TOL, rtol=MERGE_TOL)
    for name, t in got_state.tensors().items():
        torch.testing.assert_close(t, want_state.tensors()[name], atol=MERGE_TOL, rtol=MERGE_TOL)


def test_files_are_peft_layout_with_the_base_identity(tmp_path: Path) -> None:
    base = save_random("4", tmp_path / "base.pth")
    adapter = make_adapter(base, tmp_path / "adapter", rank=4, alpha=8, targets=("key", "att.output"))
    assert sorted(p.name for p in adapter.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    config = json.loads((adapter / CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == ["att.output", "key"]
    assert config[BASE_KEY]["shapes_sha256"] == ModelIdentity.of(fresh(base)).shapes_sha256
    with safe_open(str(adapter / WEIGHTS_FILE), "pt") as f:
        keys = sorted(f.keys())
    assert keys[:2] == [
        "base_model.model.blocks.0.att.key.lora_A.weight",
        "base_model.model.blocks.0.att.key.lora_B.weight",
    ]
    assert len(keys) == 2 * 2 * 3  # 2 layers x (att.key, ffn.key, att.output) x (A, B)
    # peft's own loader reads it onto the model (no rwkvkit code in between)
    from peft import PeftModel

    with pytest.warns(UserWarning, match=BASE_KEY):  # peft notes, and ignores, rwkvkit's extra key
        peft_model = PeftModel.from_pretrained(fresh(base), str(adapter))
    assert sum(".lora_B." in n for n, _ in peft_model.named_parameters()) == 6


def test_adapter_of_another_base_is_refused(tmp_path: Path) -> None:
    base = save_random("4", tmp_path / "base.pth", seed=1)
    adapter = make_adapter(base, tmp_path / "adapter")
    other = save_random("4", tmp_path / "other.pth", seed=9)
    with pytest.raises(
        CheckpointError, match=r"belongs to another base model: .*same shape but different weights"
    ):
        rwkvkit.load_model(other, adapter=adapter)
    wider = save_random("7", tmp_path / "v7.pth")
    with pytest.raises(CheckpointError, match="another base model: it was made by an RWKV-4 model"):
        rwkvkit.load_model(wider, adapter=adapter)
    with pytest.raises(CheckpointError, match="not a LoRA adapter"):
        rwkvkit.load_model(base, adapter=tmp_path)
    (adapter / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        rwkvkit.load_model(base, adapter=adapter)


def test_an_adapter_without_identity_still_needs_matching_shapes(tmp_path: Path) -> None:
    """An adapter made elsewhere (no rwkvkit identity) is checked by peft's shapes."""
    base = save_random("4", tmp_path / "base.pth")
    adapter = make_adapter(base, tmp_path / "adapter")
    config = json.loads((adapter / CONFIG_FILE).read_text())
    del config[BASE_KEY]
    (adapter / CONFIG_FILE).write_text(json.dumps(config))
    rwkvkit.load_model(base, adapter=adapter)  # same base: loads
    with pytest.raises(CheckpointError, match="does not fit the model"):
        rwkvkit.load_model(save_random("5", tmp_path / "v5.pth"), adapter=adapter)


def test_targets_that_name_nothing_are_refused(tmp_path: Path) -> None:
    model = fresh(save_random("4", tmp_path / "base.pth"))
    with pytest.raises(RwkvkitError, match=r"--lora-targets: keyy names no linear layer.*key, output"):
        add_lora(model, LoraSettings(targets=("key", "keyy")))
    with pytest.raises(RwkvkitError, match="gate names no linear layer"):
        add_lora(model, LoraSettings(targets=("gate",)))  # RWKV-4 has none: alone, it adapts nothing
    with pytest.raises(RwkvkitError, match="--lora-rank must be at least 1"):
        LoraSettings(rank=0)


@pytest.mark.parametrize("version", VERSIONS)
def test_adapter_views_share_the_base_weights_and_equal_the_merged_model(
    tmp_path: Path, version: str
) -> None:
    """Two adapters on one loaded base (what ``serve --adapter`` holds): each view computes what its
    merged model does, in forward and step, holds no weight of its own but its LoRA matrices, and
    leaves the base as it was."""
    path = save_random(version, tmp_path / "base.pth", seed=1)
    adapters = [make_adapter(path, tmp_path / f"a{i}", seed=2 + i, rank=4, alpha=8) for i in range(2)]
    base = rwkvkit.load_model(path)
    ids = tokens(version, 17, batch=2)
    with torch.no_grad():
        before = base(ids)[0]
        views = [adapter_view(base, a) for a in adapters]
        for view, adapter in zip(views, adapters, strict=True):
            merged = rwkvkit.load_model(path, adapter=adapter)
            want, want_state = merged(ids)
            got, got_state = view(ids)
            torch.testing.assert_close(got, want, atol=MERGE_TOL, rtol=MERGE_TOL)
            step, _ = view.step(ids[:, 0], got_state)
            # Typically 1e-6 apart; one run of the whole file (of about twelve) exceeded 1e-5 here and
            # was not reproduced (cause not found, noted on issue 13): 1e-4 still tells a view that
            # misses its adapter (the two views differ by > 1e-2).
            torch.testing.assert_close(
                step, merged.step(ids[:, 0], want_state)[0], atol=10 * MERGE_TOL, rtol=10 * MERGE_TOL
            )
        assert (views[0](ids)[0] - views[1](ids)[0]).abs().max() > 1e-2
        assert torch.equal(base(ids)[0], before)
    shared = {p.data_ptr() for p in base.parameters()}
    for view in views:
        own = {n: p for n, p in view.named_parameters() if p.data_ptr() not in shared}
        assert own and all(".lora_A." in n or ".lora_B." in n for n in own)
        assert sum(p.numel() for p in own.values()) < sum(p.numel() for p in base.parameters()) / 5
    assert not any(".lora_" in n for n, _ in base.named_parameters())
    with pytest.raises(RwkvkitError, match="share the base's weights only when they are not quantized"):
        adapter_view(rwkvkit.load_model(path, quantize="int8"), adapters[0])


PEER_TOL = 1e-4  # the project's bar against the official package in float32


@pytest.mark.parametrize("version", ["5", "6", "7"])
def test_merged_weights_give_the_official_package_the_adapted_logits(tmp_path: Path, version: str) -> None:
    """The merged weights (what ``rwkvkit convert RUN x.pth`` writes) in the official ``rwkv``
    package give the unmerged adapted model's logits (RWKV-4: tests/test_train_finetune.py)."""
    pytest.importorskip("rwkv")
    base = save_random(version, tmp_path / "base.pth", seed=1)
    adapter = make_adapter(base, tmp_path / "adapter", seed=2, rank=4, alpha=8)
    torch.save(merged_checkpoint(read_checkpoint(base), adapter).state_dict, tmp_path / "merged.pth")
    ids = tokens(version, 15)[0].tolist()
    with torch.no_grad():
        own = apply_adapter(fresh(base), adapter, merge=False)(torch.tensor([ids]))[0][0]
        plain = fresh(base)(torch.tensor([ids]))[0][0]
    assert (own - plain).abs().max() > 1e-2
    if version == "7":
        job = {"model": str(tmp_path / "merged.pth"), "chunks": [ids], "out": str(tmp_path / "o.pt")}
        run_official_rwkv7([job], tmp_path)
        ref = torch.load(job["out"], weights_only=True)[0]
    else:
        from rwkv.model import RWKV  # environment switches are set in conftest.py

        official = RWKV(model=str(tmp_path / "merged.pth"), strategy="cpu fp32", verbose=False)
        ref = official.forward(ids, None, full_output=True)[0]
    assert (ref.reshape(own.shape) - own).abs().max().item() <= PEER_TOL
