"""Fine-tuning through the training loop: LoRA, state tuning and full fine-tuning learn, train only
what they should (no gradients or optimizer state for frozen weights), resume exactly, refuse a
resume by another method or from another base, and their runs load and convert with the run's
own numbers (the official package and transformers read the converted files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tuned_models import VERSIONS, save_random

import rwkvkit
from rwkvkit.checkpoint import build_model, read_checkpoint
from rwkvkit.convert import convert
from rwkvkit.errors import RwkvkitError
from rwkvkit.formats import run as layout
from rwkvkit.formats import time_state
from rwkvkit.statefile import load_initial_state
from rwkvkit.train.config import FinetuneConfig, TrainConfig
from rwkvkit.train.data import TokenData, prepare
from rwkvkit.train.finetune import finetune, make_trainee
from rwkvkit.train.loop import train

pytest.importorskip("peft")
from rwkvkit.lora import apply_adapter  # (peft is optional)

pytestmark = pytest.mark.usefixtures("single_thread")

MERGE_TOL = 1e-5  # merged against unmerged LoRA, float32 (tests/test_lora.py)
PEER_TOL = 1e-4  # the project's bar against the official package and transformers in float32
LR = {"lora": 1e-2, "state": 1.0, "full": 3e-3}  # high enough to learn in a few steps


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random byte-level RWKV-4 (vocabulary 256, so the byte-tokenized data fits it)."""
    return save_random("4", tmp_path_factory.mktemp("base") / "base.pth", seed=11, vocab_size=256)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": "Aye."},
            ]
        }
        for i in range(24)
    ]
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path_factory.mktemp("chat_data")
    prepare([str(src)], out, tokenizer="byte", val_fraction=0.2, progress=False)
    return out


def tune(data: Path, out: Path, base: Path, method: str, **kw) -> FinetuneConfig:
    cfg = dict(
        data=str(data), out=str(out), model=str(base), method=method, ctx_len=48, batch_size=4, steps=6,
        warmup=0, lr=LR[method], save_every=3, eval_every=3, eval_windows=4, log_every=1, sample_len=8,
        threads=1, progress=False, lora_rank=4,
    )  # fmt: skip
    cfg.update(kw)
    return FinetuneConfig(**cfg)


def losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


@pytest.mark.parametrize("method", ["lora", "state", "full"])
def test_each_method_learns_and_its_run_loads_with_its_own_numbers(
    base: Path, chat_dir: Path, tmp_path: Path, method: str
) -> None:
    out = tmp_path / method
    finetune(tune(chat_dir, out, base, method))
    rows = losses(out)
    assert rows[-1] < rows[0], rows
    # samples answer the first validation question (chat data's default sample prompt)
    assert "=== step 6" in (out / "samples.txt").read_text()
    assert "User: Question 19?\n\nAssistant:" in (out / "samples.txt").read_text()
    info = layout.read_run_file(out)
    assert info["method"] == method and info["base"]["path"] == str(base)
    ids = torch.tensor([list(b"User: Question 3?\n\nAssistant:")])
    loaded = rwkvkit.load_model(out)
    with torch.no_grad():
        got = loaded(ids)[0]
        plain = rwkvkit.load_model(base)(ids)[0]
    assert (got - plain).abs().max() > 1e-3  # the tuned run is not the base
    last = layout.latest_checkpoint(out)
    saved = load_file(last)
    if method == "lora":  # the run's own model: the base with the checkpoint's adapter, unmerged
        adapter = load_file(out / "adapter" / "adapter_model.safetensors")
        assert {k.removeprefix("base_model.model.") for k in adapter} == set(saved)
        assert all(torch.equal(adapter["base_model.model." + k], v) for k, v in saved.items())
        with torch.no_grad():
            own = apply_adapter(build_model(read_checkpoint(base)), out, merge=False)(ids)[0]
        torch.testing.assert_close(got, own, atol=MERGE_TOL, rtol=MERGE_TOL)
    elif method == "state":
        state = loaded.initial_state(1)
        assert set(saved) == {"state.wkv_num", "state.wkv_den", "state.wkv_max"}
        assert all(torch.equal(getattr(state, k.removeprefix("state.")), v) for k, v in saved.items())
        assert (state.wkv_den >= 0).all() and state.wkv_num.abs().max() > 0
        # the run as a start state for another loaded base (what `serve --state NAME=RUN` reads)
        start = load_initial_state(out, rwkvkit.load_model(base))
        assert all(torch.equal(t, state.tensors()[k]) for k, t in start.tensors().items())
        assert torch.equal(
            loaded.state_dict()["emb.weight"], rwkvkit.load_model(base).state_dict()["emb.weight"]
        )
    else:
        assert set(saved) == set(loaded.state_dict())
        assert all(
            torch.equal(loaded.state_dict()[k], v.reshape(loaded.state_dict()[k].shape))
            for k, v in saved.items()
        )


@pytest.mark.parametrize("method", ["lora", "state"])
def test_frozen_weights_get_no_gradient_and_no_optimizer_state(
    base: Path, chat_dir: Path, tmp_path: Path, method: str
) -> None:
    cfg = tune(chat_dir, tmp_path / "run", base, method)
    data = TokenData.open(chat_dir)
    trainee = make_trainee(cfg, data)
    groups = trainee.param_groups(0.0)
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    named = dict(trainee.module.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert in_optimizer == {id(named[n]) for n in trainable}
    if method == "lora":
        assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    else:
        assert trainable == {"learned.wkv_num", "learned.wkv_den", "learned.wkv_max"}
    base_params = dict(trainee.model.named_parameters())
    assert not any(p.requires_grad for n, p in base_params.items() if ".lora_" not in n)
    x, y, mask = data.sampler("train", cfg.ctx_len, 0).read([0, 1])
    logits, _ = trainee.module(x)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
    assert all(named[n].grad is not None for n in trainable)
    assert all(p.grad is None for n, p in named.items() if n not in trainable)
    # the run's own optimizer, as its checkpoint saved it: state for the trained tensors only
    finetune(cfg)
    info = layout.read_run_file(cfg.out)
    opt = torch.load(layout.train_state_path(cfg.out, 6), weights_only=True)["optimizer"]
    assert len(opt["state"]) == len(trainable) == sum(len(g["params"]) for g in opt["param_groups"])
    assert sum(s["exp_avg"].numel() for s in opt["state"].values()) == info["n_trainable"]
    assert info["n_trainable"] < info["n_params"] / 10


@pytest.mark.parametrize("method", ["lora", "state"])
def test_resume_is_bit_identical(base: Path, chat_dir: Path, tmp_path: Path, method: str) -> None:
    finetune(tune(chat_dir, tmp_path / "straight", base, method))
    finetune(tune(chat_dir, tmp_path / "split", base, method, stop_after=3))
    assert layout.complete_steps(tmp_path / "split") == [3]
    finetune(tune(chat_dir, tmp_path / "split", base, method, resume=True))
    a = load_file(layout.latest_checkpoint(tmp_path / "straight"))
    b = load_file(layout.latest_checkpoint(tmp_path / "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_by_another_method_or_from_another_base_is_refused(
    base: Path, chat_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    finetune(tune(chat_dir, out, base, "lora", steps=3))
    with pytest.raises(
        RwkvkitError,
        match=r"made by `rwkvkit finetune --method lora`; it cannot be resumed with --method state",
    ):
        finetune(tune(chat_dir, out, base, "state", resume=True))
    with pytest.raises(RwkvkitError, match=r"cannot be resumed with `rwkvkit train`"):
        train(TrainConfig(data=str(chat_dir), out=str(out), resume=True, progress=False))
    scratch = tmp_path / "scratch"
    train(TrainConfig(data=str(data_dir), out=str(scratch), n_layer=1, n_embd=16, ctx_len=16, steps=2,
                      save_every=2, eval_every=0, progress=False, threads=1))  # fmt: skip
    with pytest.raises(
        RwkvkitError, match=r"made by `rwkvkit train`; it cannot be resumed with --method full"
    ):
        finetune(tune(data_dir, scratch, base, "full", resume=True))
    # the run resumes from the base it recorded; if that file now holds other weights, it stops
    moving = save_random("4", tmp_path / "moving.pth", seed=11, vocab_size=256)
    finetune(tune(chat_dir, tmp_path / "run2", moving, "state", steps=6, stop_after=3))
    save_random("4", moving, seed=12, vocab_size=256)
    with pytest.raises(
        RwkvkitError, match=r"tuned from another base model than .*moving.pth: .*different weights"
    ):
        finetune(tune(chat_dir, tmp_path / "run2", moving, "state", resume=True))


def test_data_of_another_tokenizer_is_refused(base: Path, tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("hello world " * 50)
    prepare([str(tmp_path / "t.txt")], tmp_path / "world", tokenizer="world", progress=False)
    with pytest.raises(
        RwkvkitError, match=r"tokenized with 'world', but .* uses 'byte'; prepare the data again"
    ):
        finetune(tune(tmp_path / "world", tmp_path / "run", base, "lora"))


@pytest.mark.parametrize("version", VERSIONS)
def test_state_tuning_on_every_version(chat_dir: Path, tmp_path: Path, version: str) -> None:
    base = save_random(version, tmp_path / "base.pth", seed=3, vocab_size=256)
    out = tmp_path / "run"
    finetune(tune(chat_dir, out, base, "state", steps=4, save_every=4, eval_every=0))
    rows = losses(out)
    assert rows[-1] < rows[0], rows
    model = rwkvkit.load_model(out)
    ckpt = load_file(layout.latest_checkpoint(out))
    state = model.initial_state(1)
    for name, t in ckpt.items():
        assert torch.equal(getattr(state, name.removeprefix("state.")), t)
    zero = rwkvkit.load_model(base).initial_state(1)
    for name in ("att_x_prev", "ffn_x_prev"):  # only the WKV part is tuned
        assert torch.equal(getattr(state, name), getattr(zero, name))
    if version == "4":
        assert not (out / "state.pth").exists()
    else:
        official = torch.load(out / "state.pth", weights_only=True)
        assert sorted(official) == [f"blocks.{i}.att.time_state" for i in range(2)]
        assert all(torch.equal(official[k], v) for k, v in time_state.from_state(state, version).items())


def test_lora_run_converts_to_files_the_peers_run(base: Path, chat_dir: Path, tmp_path: Path) -> None:
    """The merged weights, in every format, give the run's own (unmerged) logits: the official
    package reads the .pth, transformers the Hugging Face folder, rwkvkit the others."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("rwkv")
    from rwkv.model import RWKV  # environment switches are set in conftest.py

    out = tmp_path / "run"
    finetune(tune(chat_dir, out, base, "lora", steps=3, eval_every=0))
    ids = list(b"User: Question 3?\n\nAssistant: Aye.")
    with torch.no_grad():
        own = apply_adapter(build_model(read_checkpoint(base)), out, merge=False)(ids)[0][0]
        convert(out, tmp_path / "m.pth", "pth")
        official = RWKV(model=str(tmp_path / "m.pth"), strategy="cpu fp32", verbose=False)
        assert (official.forward(ids, None, full_output=True)[0] - own).abs().max() <= PEER_TOL
        convert(out, tmp_path / "hf", "hf")
        hf = transformers.RwkvForCausalLM.from_pretrained(tmp_path / "hf").eval()
        assert (hf(torch.tensor([ids])).logits[0] - own).abs().max() <= PEER_TOL
        for to, name in (("safetensors", "m.safetensors"), ("rwkvcpp", "m.bin")):
            convert(out, tmp_path / name, to)
            assert (rwkvkit.load_model(tmp_path / name)(ids)[0][0] - own).abs().max() <= MERGE_TOL


def test_state_run_converts_to_a_model_file_with_its_time_state(chat_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("rwkv")
    from rwkv.model import RWKV  # environment switches are set in conftest.py

    base = save_random("5", tmp_path / "base.pth", seed=3, vocab_size=256)
    out = tmp_path / "run"
    finetune(tune(chat_dir, out, base, "state", steps=3, eval_every=0))
    convert(out, tmp_path / "merged.pth", "pth")
    ids = list(b"User: Question 3?\n\nAssistant:")
    with torch.no_grad():
        own = rwkvkit.load_model(out)(ids)[0][0]
        official = RWKV(model=str(tmp_path / "merged.pth"), strategy="cpu fp32", verbose=False)
        assert (official.forward(ids, None, full_output=True)[0] - own).abs().max() <= PEER_TOL
        assert (rwkvkit.load_model(tmp_path / "merged.pth")(ids)[0][0] - own).abs().max() <= 1e-5
    with pytest.raises(RwkvkitError, match="has no place in a hf file"):
        convert(out, tmp_path / "hf", "hf")
    v4 = save_random("4", tmp_path / "v4.pth", vocab_size=256)
    finetune(tune(chat_dir, tmp_path / "v4run", v4, "state", steps=1, eval_every=0, save_every=1))
    with pytest.raises(RwkvkitError, match="RWKV-4 has no official layout for a tuned state"):
        convert(tmp_path / "v4run", tmp_path / "v4-merged.pth", "pth")
