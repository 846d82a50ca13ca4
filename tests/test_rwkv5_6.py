"""RWKV-5 (5.0, 5.1, 5.2) and RWKV-6 (rwkvkit/models/rwkv5.py, rwkv6.py): the parallel ``forward``
and the one-token ``step`` agree (logits, state, gradients), the logits agree with the official
``rwkv`` package (which detects these versions itself), versions are detected from keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rwkvkit
from rwkvkit.errors import StateError
from rwkvkit.models import detect_version
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.testing import (
    assert_calls_agree,
    assert_step_gradients_match_forward,
    assert_step_matches_forward,
    random_rwkv5,
    random_rwkv5_state_dict,
    random_rwkv6,
    random_rwkv6_state_dict,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# Parallel (chunked) vs recurrent: float32 sums in another order, ~1e-6 relative on logits ~5.
MODE_TOL = 2e-5
# The bar against the official package in float32.
PEER_TOL = 1e-4
# forward vs step from the same state: measured <= 6e-6 on logits and states.
STEP_TOL = 1e-5

V50 = RWKV5Config(
    vocab_size=97,
    n_layer=2,
    n_embd=48,
    ffn_dim=80,
    head_size=16,
    gate=False,
    per_channel_decay=False,
    log_bonus=True,
    chunk_len=8,
)
V51 = RWKV5Config(
    vocab_size=97,
    n_layer=3,
    n_embd=32,
    ffn_dim=112,
    head_size=8,
    gate=True,
    per_channel_decay=False,
    log_bonus=True,
    chunk_len=16,
)
V52 = RWKV5Config(vocab_size=256, n_layer=2, n_embd=128, ffn_dim=448, head_size=64, chunk_len=32)
V52_ODD = RWKV5Config(vocab_size=50, n_layer=2, n_embd=40, ffn_dim=7, head_size=8, chunk_len=5)
V6 = RWKV6Config(
    vocab_size=97, n_layer=3, n_embd=64, ffn_dim=224, head_size=16, mix_lora=8, decay_lora=12, chunk_len=8
)
V6_WIDE = RWKV6Config(
    vocab_size=256, n_layer=2, n_embd=128, ffn_dim=100, head_size=64, mix_lora=32, decay_lora=64, chunk_len=32
)
CASES = [
    ("5.0", V50, random_rwkv5, random_rwkv5_state_dict),
    ("5.1", V51, random_rwkv5, random_rwkv5_state_dict),
    ("5.2", V52, random_rwkv5, random_rwkv5_state_dict),
    ("5.2-odd", V52_ODD, random_rwkv5, random_rwkv5_state_dict),
    ("6", V6, random_rwkv6, random_rwkv6_state_dict),
    ("6-wide", V6_WIDE, random_rwkv6, random_rwkv6_state_dict),
]  # fmt: skip
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize(("name", "config", "make", "make_sd"), CASES, ids=IDS)
def test_parallel_recurrent_and_split_agree(name, config, make, make_sd) -> None:
    tokens = torch.randint(0, config.vocab_size, (2, 37), generator=torch.Generator().manual_seed(0))
    assert_calls_agree(make(config, seed=1), tokens, split=13, tol=MODE_TOL)


@pytest.mark.parametrize(("name", "config", "make", "make_sd"), CASES, ids=IDS)
def test_step_equals_forward_from_a_nonzero_state(name, config, make, make_sd) -> None:
    """Token-by-token ``model.step`` == one ``model.forward`` over the sequence, logits and state."""
    assert_step_matches_forward(make(config, seed=7), config.vocab_size, tol=STEP_TOL)


@pytest.mark.parametrize(("name", "config", "make", "make_sd"), CASES, ids=IDS)
def test_logits_equal_official_rwkv_package(tmp_path: Path, name, config, make, make_sd) -> None:
    pytest.importorskip("rwkv")
    from rwkv.model import RWKV  # environment switches are set in conftest.py

    path = tmp_path / "model.pth"
    sd = make_sd(config, seed=5)
    assert detect_version(sd) == name[0]
    torch.save(sd, path)
    official = RWKV(model=str(path), strategy="cpu fp32", verbose=False)
    assert f"{official.version:.1f}" == (name[:3] if name[0] == "5" else "6.0")  # the package's own detection
    ours = rwkvkit.load_model(path)
    tokens = torch.randint(0, config.vocab_size, (23,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.no_grad():
        state, ref_state = None, None
        for chunk in (tokens[:15], tokens[15:16], tokens[16:]):
            ref, ref_state = official.forward(chunk, ref_state, full_output=True)
            got, state = ours(chunk, state)
            diff = (got[0] - ref.reshape(len(chunk), -1)).abs().max().item()
            assert diff <= PEER_TOL, (name, len(chunk), diff)
        # The WKV state is in the official layout: compare it too.
        for i in range(config.n_layer):
            torch.testing.assert_close(state.wkv[i, 0], ref_state[3 * i + 1], atol=PEER_TOL, rtol=1e-4)


def test_states_are_version_specific_and_untouched() -> None:
    v5, v6 = random_rwkv5(V52_ODD, seed=0), random_rwkv6(V6, seed=0)
    with torch.no_grad():
        _, s5 = v5([1, 2, 3])
        before = s5.clone()
        v5([4, 5], s5)
        v5([6], s5)
        for field, t in before.tensors().items():
            assert torch.equal(t, s5.tensors()[field]), field
        with pytest.raises(StateError, match="RWKV6State"):
            v6([1], s5)


@pytest.mark.parametrize(("name", "config", "make"), [c[:3] for c in CASES if c[0] in ("5.1", "6")])
def test_step_gradients_equal_forward_gradients(name, config, make) -> None:
    """Training through either mode gives the same gradient for every parameter, and all are finite."""
    assert_step_gradients_match_forward(
        make(config, seed=4), config.vocab_size, lambda s: s.att_x_prev.sum() + s.wkv.sum()
    )
