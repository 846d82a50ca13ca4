"""RWKV-7 model (rwkvkit/models/rwkv7.py): the parallel ``forward`` and the one-token ``step`` agree
(logits, state, gradients), the logits agree with the official ``rwkv`` package (run in a
subprocess: it needs RWKV_V7_ON=1 at import), and loading goes through ``rwkvkit.load_model`` from
.pth and .safetensors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import rwkvkit
from rwkvkit.errors import StateError, UnsupportedVersionError
from rwkvkit.models import detect_version
from rwkvkit.models.rwkv7 import RWKV7, RWKV7Config, RWKV7State, init_rwkv7_
from rwkvkit.testing import (
    assert_calls_agree,
    assert_step_gradients_match_forward,
    assert_step_matches_forward,
    random_rwkv7,
    random_rwkv7_state_dict,
)

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]
# Parallel (chunked, UT transform) vs recurrent: float32 sums in another order, ~1e-6 relative on
# logits of size ~5.
MODE_TOL = 2e-5
# The bar against the official package in float32.
PEER_TOL = 1e-4
# Layer 0's value-residual gate is unused by design (its value is v_first itself): no gradient.
LAYER0_UNUSED = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")
# forward vs step from the same state: measured <= 3e-6 on logits and states.
STEP_TOL = 1e-5

SHAPES = [
    # Released models use head_size 64; smaller heads, odd layer counts, an FFN that is not 4x and
    # low-rank widths that differ from each other catch transposed or swapped tensors.
    RWKV7Config(vocab_size=97, n_layer=3, n_embd=48, ffn_dim=80, head_size=16,
                decay_lora=8, iclr_lora=12, value_lora=4, gate_lora=20, chunk_len=8),
    RWKV7Config(vocab_size=256, n_layer=2, n_embd=128, ffn_dim=512, head_size=64,
                decay_lora=32, iclr_lora=32, value_lora=32, gate_lora=64, chunk_len=16),
    RWKV7Config(vocab_size=50, n_layer=1, n_embd=24, ffn_dim=7, head_size=8,
                decay_lora=4, iclr_lora=4, value_lora=4, gate_lora=4, chunk_len=32),
]  # fmt: skip


@pytest.mark.parametrize("config", SHAPES)
def test_parallel_recurrent_and_split_agree(config: RWKV7Config) -> None:
    tokens = torch.randint(0, config.vocab_size, (3, 41), generator=torch.Generator().manual_seed(0))
    assert_calls_agree(random_rwkv7(config, seed=1), tokens, split=17, tol=MODE_TOL)


@pytest.mark.parametrize("config", SHAPES)
def test_step_equals_forward_from_a_nonzero_state(config: RWKV7Config) -> None:
    """Token-by-token ``model.step`` == one ``model.forward`` over the sequence, logits and state."""
    assert_step_matches_forward(random_rwkv7(config, seed=7), config.vocab_size, tol=STEP_TOL)


def test_batch_rows_independent_state_untouched_and_bad_states_refused() -> None:
    model = random_rwkv7(SHAPES[0], seed=2)
    tokens = torch.randint(0, 97, (4, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched, state = model(tokens)
        single, _ = model(tokens[2])
        torch.testing.assert_close(batched[2:3], single, atol=MODE_TOL, rtol=MODE_TOL)
        before = state.clone()
        model(tokens[:, :3], state)
        model(tokens[:, :1], state)
        for name, t in before.tensors().items():
            assert torch.equal(t, state.tensors()[name]), name
        assert state.wkv.shape == (3, 4, 3, 16, 16)
        with pytest.raises(StateError, match="batch"):
            model(tokens[:2], state)
        with pytest.raises(StateError):
            random_rwkv7(SHAPES[2], seed=0)([1], state)


def test_step_gradients_equal_forward_gradients() -> None:
    """Training through either mode gives the same gradient for every parameter, and all are finite."""
    assert_step_gradients_match_forward(
        random_rwkv7(SHAPES[0], seed=4),
        SHAPES[0].vocab_size,
        lambda s: s.att_x_prev.sum() + s.wkv.sum(),
        unused=LAYER0_UNUSED,
    )


def test_state_roundtrips_through_tensors() -> None:
    model = random_rwkv7(SHAPES[0], seed=2)
    with torch.no_grad():
        _, state = model([1, 2, 3])
    again = RWKV7State.from_tensors(state.tensors())
    assert torch.equal(again.wkv, state.wkv)


def test_version_is_detected_from_keys() -> None:
    sd = random_rwkv7_state_dict(SHAPES[0])
    assert detect_version(sd) == "7"
    with pytest.raises(UnsupportedVersionError, match="DeepEmbed"):
        detect_version({**sd, "blocks.0.ffn.s_emb.weight": torch.zeros(1)})
    with pytest.raises(UnsupportedVersionError, match="pre-release"):
        detect_version({"emb.weight": torch.zeros(1), "blocks.0.att.time_misc_a": torch.zeros(1)})


def test_load_model_from_pth_and_safetensors(tmp_path: Path) -> None:
    sd = random_rwkv7_state_dict(SHAPES[0], seed=3)
    torch.save(sd, tmp_path / "m.pth")
    save_file(
        {k: v.reshape(-1) if k.endswith(("x_r", "w0", "k_k")) else v for k, v in sd.items()},
        tmp_path / "m.safetensors",
    )  # fmt: skip  (squeezed vectors, as some converters write)
    ref = random_rwkv7(SHAPES[0], seed=3)
    tokens = [5, 1, 7, 3]
    with torch.no_grad():
        want, _ = ref(tokens)
        for path in (tmp_path / "m.pth", tmp_path / "m.safetensors"):
            model = rwkvkit.load_model(path)
            assert model.config == SHAPES[0].__class__.from_state_dict(sd)
            got, _ = model(tokens)
            # load_model's fast layers sum in another order (rwkvkit/ops/linear.py): fp32 rounding
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=str(path))


def run_official_rwkv7(jobs: list[dict], tmp_path: Path) -> None:
    """Run tests/official_rwkv7_runner.py on the jobs (see its docstring) in a fresh interpreter."""
    pytest.importorskip("rwkv")
    job_file = tmp_path / "jobs.json"
    job_file.write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # see conftest.single_thread
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "official_rwkv7_runner.py"), str(job_file)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_logits_equal_official_rwkv_package(tmp_path: Path) -> None:
    chunks = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9], [7], [9, 3, 2, 3, 8, 4]]
    jobs = []
    for i, config in enumerate(SHAPES):
        torch.save(random_rwkv7_state_dict(config, seed=10 + i), tmp_path / f"m{i}.pth")
        jobs.append(
            {"model": str(tmp_path / f"m{i}.pth"), "chunks": chunks, "out": str(tmp_path / f"o{i}.pt")}
        )
    run_official_rwkv7(jobs, tmp_path)
    for job in jobs:
        ours = rwkvkit.load_model(job["model"])
        refs = torch.load(job["out"], weights_only=True)
        state = None
        with torch.no_grad():
            for chunk, ref in zip(chunks, refs, strict=True):
                logits, state = ours(chunk, state)
                diff = (logits[0] - ref).abs().max().item()
                assert diff <= PEER_TOL, (job["model"], len(chunk), diff)


def test_official_initialisation() -> None:
    config = RWKV7Config(vocab_size=300, n_layer=4, n_embd=64, ffn_dim=256, head_size=16, decay_lora=32,
                         iclr_lora=32, value_lora=32, gate_lora=32)  # fmt: skip
    model = init_rwkv7_(RWKV7(config), seed=0).requires_grad_(False)
    att0, att3 = model.blocks[0].att, model.blocks[3].att
    # Anchors of BlinkDL's formulas: channel 0 of layer 0 copies the previous token fully; w0 runs
    # from ~-6 to ~+0.5 with a +-2.5 zigzag inside each head; ln_x grows to 1 in the last layer.
    assert att0.x_r[0, 0, 0] == 1.0 and 0 < att0.x_r[0, 0, -1] < 0.01
    assert att0.w0.min() < -7 and att0.w0.max() > 2.5
    assert torch.allclose(att3.ln_x.weight, torch.ones(64))
    assert att0.ln_x.weight[0].item() == pytest.approx(0.25**0.7)
    assert att0.w1.abs().sum() == 0 and torch.allclose(att0.w2 @ att0.w2.T, 0.01 * torch.eye(32), atol=1e-5)
    assert (
        model.blocks[2].att.output.weight.abs().sum() == 0
        and model.blocks[2].ffn.value.weight.abs().sum() == 0
    )
    with torch.no_grad():
        logits, _ = model(torch.randint(0, 300, (2, 40)))
    # Blocks start as the identity, so the logits are the head applied to ln_out(ln0(emb)): finite, O(1).
    assert torch.isfinite(logits).all() and logits.abs().max() < 10
    model.train().requires_grad_(True)
    model(torch.randint(0, 300, (2, 40)))[0].logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        if name not in LAYER0_UNUSED:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_head_norm_is_group_norm() -> None:
    """The step's GroupNorm over heads (models/common.py: head_norm) against F.group_norm, float32
    rounding apart (the same sums in another order)."""
    from rwkvkit.models.common import head_norm

    gen = torch.Generator().manual_seed(0)
    y, w, b = (
        torch.randn(5, 768, generator=gen) * 3,
        torch.randn(768, generator=gen),
        torch.randn(768, generator=gen),
    )
    want = torch.nn.functional.group_norm(y, 12, w, b, 64e-5)
    torch.testing.assert_close(head_norm(y, 12, w, b, 64e-5), want, atol=1e-5, rtol=1e-5)
