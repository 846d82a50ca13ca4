"""Shared test fixtures. The official ``rwkv`` package reads its switches from the environment
at import time, so they are set here, before any test imports it: no TorchScript, no CUDA."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("RWKV_JIT_ON", "0")
os.environ.setdefault("RWKV_CUDA_ON", "0")

import pytest
import torch

from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.testing import random_rwkv4_state_dict

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RWKVKIT_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A file under ../shared, or skip the test saying what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests need the project's shared/ folder beside the repo")
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    return (
        Path(os.environ["RWKVKIT_FIXTURES"])
        if "RWKVKIT_FIXTURES" in os.environ
        else shared_path("fixtures", "rwkv-cpp-tiny")
    )


@pytest.fixture
def small_config() -> RWKV4Config:
    # Odd width and an FFN that is not 4x wide catch shape mistakes that square sizes hide.
    return RWKV4Config(vocab_size=97, n_layer=3, n_embd=40, ffn_dim=72, chunk_len=8)


@pytest.fixture
def small_pth(tmp_path: Path, small_config: RWKV4Config) -> Path:
    path = tmp_path / "small.pth"
    torch.save(random_rwkv4_state_dict(small_config, seed=3), path)
    return path


@pytest.fixture(autouse=True)
def single_thread():
    """Run every test on one intra-op thread. The tests' tensors are tiny, and on a shared, busy
    machine every multi-threaded kernel launch waits for a descheduled second thread (a 32x8 bmm
    measured 24 ms with 2 threads against 0.01 ms with 1), which made small-op tests ~5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
