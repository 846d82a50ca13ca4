"""Tuned initial states in the official layout (``blocks.N.att.time_state``), against the official
``rwkv`` package: read as a state file, merged into a model file, handed to its forward as a state
list; and RWKV-4's rwkvkit state files against the package's own state list."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_run import rwkvkit_cli
from test_rwkv7 import run_official_rwkv7
from tuned_models import CONFIGS, STATE_DICTS, save_random, tokens

import rwkvkit
from rwkvkit.errors import StateError
from rwkvkit.formats import time_state
from rwkvkit.models.rwkv4 import RWKV4State
from rwkvkit.statefile import load_state, save_state

pytestmark = pytest.mark.usefixtures("single_thread")

PEER_TOL = 1e-4  # the project's bar against the official package in float32


def random_time_state(version: str, seed: int = 0) -> dict[str, torch.Tensor]:
    c = CONFIGS[version]
    H, N = c.n_embd // c.head_size, c.head_size
    gen = torch.Generator().manual_seed(seed)
    # not symmetric, so a transposed reading gives other numbers
    return {time_state.time_state_key(i): torch.randn(H, N, N, generator=gen) * 0.5 for i in range(c.n_layer)}


def official_state_list(version: str, ts: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The package's state: per layer [att x_prev, WKV (its own orientation), ffn x_prev]."""
    C = CONFIGS[version].n_embd
    out = []
    for i in range(CONFIGS[version].n_layer):
        wkv = ts[time_state.time_state_key(i)]
        out += [
            torch.zeros(C),
            (wkv.transpose(1, 2) if version in "56" else wkv).contiguous(),
            torch.zeros(C),
        ]
    return out


def official(path: Path):
    pytest.importorskip("rwkv")
    from rwkv.model import RWKV  # environment switches are set in conftest.py

    return RWKV(model=str(path), strategy="cpu fp32", verbose=False)


@pytest.mark.parametrize("version", ["5", "6"])
def test_official_state_files_match_the_official_package(tmp_path: Path, version: str) -> None:
    sd = STATE_DICTS[version](CONFIGS[version], seed=3)
    ts = random_time_state(version, seed=4)
    torch.save(sd, tmp_path / "base.pth")
    torch.save(ts, tmp_path / "state.pth")
    torch.save({**sd, **ts}, tmp_path / "merged.pth")  # RWKV-PEFT's merge_state.py output
    ids = tokens(version, 17)[0].tolist()
    ref_merged, _ = official(tmp_path / "merged.pth").forward(ids, None, full_output=True)  # reads time_state
    ref_list, _ = official(tmp_path / "base.pth").forward(
        ids, official_state_list(version, ts), full_output=True
    )
    torch.testing.assert_close(ref_merged, ref_list)  # the package agrees with itself on the layout
    with torch.no_grad():
        from_file = rwkvkit.load_model(tmp_path / "base.pth", state=tmp_path / "state.pth")(ids)[0][0]
        from_merged = rwkvkit.load_model(tmp_path / "merged.pth")(ids)[0][0]
        base = rwkvkit.load_model(tmp_path / "base.pth")
        given = base(ids, load_state(tmp_path / "state.pth", base).state)[0][0]
    for got in (from_file, from_merged, given):
        assert (got - ref_list.reshape(len(ids), -1)).abs().max().item() <= PEER_TOL
    assert (base(ids)[0][0] - got).abs().max() > 1e-2  # the state matters


def test_official_state_files_match_the_official_package_rwkv7(tmp_path: Path) -> None:
    save_random("7", tmp_path / "base.pth", seed=3)
    ts = random_time_state("7", seed=4)
    torch.save(ts, tmp_path / "state.pth")
    torch.save(official_state_list("7", ts), tmp_path / "official_list.pt")
    chunks = [tokens("7", 13)[0].tolist(), [5]]
    job = {"model": str(tmp_path / "base.pth"), "chunks": chunks, "out": str(tmp_path / "o.pt"),
           "state": str(tmp_path / "official_list.pt")}  # fmt: skip
    run_official_rwkv7([job], tmp_path)
    refs = torch.load(job["out"], weights_only=True)
    model = rwkvkit.load_model(tmp_path / "base.pth", state=tmp_path / "state.pth")
    state = None
    with torch.no_grad():
        for chunk, ref in zip(chunks, refs, strict=True):
            logits, state = model(chunk, state)
            assert (logits[0] - ref).abs().max().item() <= PEER_TOL


def test_rwkv4_state_files_match_the_official_state_list(tmp_path: Path) -> None:
    """RWKV-4 has no official time_state; its tuned WKV sums (offset 0) in an rwkvkit state file
    give the package's numbers when the package is handed the same sums."""
    base_path = save_random("4", tmp_path / "base.pth", seed=3)
    base = rwkvkit.load_model(base_path)
    c, gen = CONFIGS["4"], torch.Generator().manual_seed(5)
    L, C = c.n_layer, c.n_embd
    tuned = RWKV4State(
        att_x_prev=torch.zeros(L, 1, C),
        wkv_num=torch.randn(L, 1, C, generator=gen),
        wkv_den=torch.rand(L, 1, C, generator=gen) * 2,
        wkv_max=torch.zeros(L, 1, C),
        ffn_x_prev=torch.zeros(L, 1, C),
    )
    save_state(tmp_path / "s.safetensors", tuned, base, tokens_consumed=0)
    ids = tokens("4", 15)[0].tolist()
    package_state = [
        t for i in range(L) for t in (tuned.layer(i).tensors()[n][0].clone() for n in tuned.tensors())
    ]
    ref, _ = official(base_path).forward(ids, package_state, full_output=True)
    with torch.no_grad():
        got = rwkvkit.load_model(base_path, state=tmp_path / "s.safetensors")(ids)[0][0]
    assert (got - ref.reshape(len(ids), -1)).abs().max().item() <= PEER_TOL


def test_initial_state_is_the_tuned_one_expanded(tmp_path: Path) -> None:
    save_random("5", tmp_path / "base.pth")
    ts = random_time_state("5")
    torch.save(ts, tmp_path / "state.pth")
    model = rwkvkit.load_model(tmp_path / "base.pth", state=tmp_path / "state.pth")
    s3 = model.initial_state(3)
    assert s3.batch_size == 3 and all(torch.equal(s3.wkv[:, b], s3.wkv[:, 0]) for b in range(3))
    assert torch.equal(
        time_state.from_state(model.initial_state(1), "5")["blocks.1.att.time_state"],
        ts["blocks.1.att.time_state"],
    )
    s3.wkv.add_(1)  # a caller's copy: the tuned state itself is untouched
    assert torch.equal(model.initial_state(1).wkv, model.default_state.wkv)
    ids = tokens("5", 9, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], model(ids, model.default_state.expand(3))[0])


def test_generate_cli_reads_an_official_state(tmp_path: Path) -> None:
    base = save_random("5", tmp_path / "base.pth", vocab_size=256)
    torch.save(random_time_state("5"), tmp_path / "state.pth")
    args = ["generate", "--model", str(base), "--tokenizer", "byte", "--prompt", "ab", "--temperature", "0",
            "--max-tokens", "12"]  # fmt: skip
    with_state = rwkvkit_cli(*args, "--state", str(tmp_path / "state.pth")).stdout
    model = rwkvkit.load_model(base, state=tmp_path / "state.pth")
    tok = rwkvkit.load_tokenizer("byte")
    want = rwkvkit.generate_text(model, tok, "ab", max_tokens=12, temperature=0).text
    assert with_state == want + "\n" and with_state != rwkvkit_cli(*args).stdout


def test_bad_official_states_are_refused(tmp_path: Path) -> None:
    save_random("5", tmp_path / "base.pth")
    model = rwkvkit.load_model(tmp_path / "base.pth")
    ts = random_time_state("5")
    torch.save({"blocks.0.att.time_state": ts["blocks.0.att.time_state"]}, tmp_path / "one_layer.pth")
    with pytest.raises(StateError, match=r"expected blocks.0 .. blocks.1.att.time_state .* found 1"):
        load_state(tmp_path / "one_layer.pth", model)
    torch.save({k: v[:, :4] for k, v in ts.items()}, tmp_path / "narrow.pth")
    with pytest.raises(StateError, match=r"has shape \(3, 4, 16\), this model's is \(3, 16, 16\)"):
        load_state(tmp_path / "narrow.pth", model)
    torch.save({"emb.weight": torch.zeros(3)}, tmp_path / "model_not_state.pth")
    with pytest.raises(StateError, match="neither an rwkvkit state file nor an official state file"):
        load_state(tmp_path / "model_not_state.pth", model)
    torch.save(ts, tmp_path / "state.pth")
    v4 = rwkvkit.load_model(save_random("4", tmp_path / "v4.pth"))
    with pytest.raises(StateError, match="WKV state of RWKV-5, 6 or 7; this is an RWKV-4 model"):
        load_state(tmp_path / "state.pth", v4)
    (tmp_path / "junk.pth").write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(StateError, match="not a readable state file"):
        load_state(tmp_path / "junk.pth", model)
