"""Shared test fixtures. The official ``rwkv`` package reads its switches from the environment
at import time, so they are set here, before any test imports it: no TorchScript, no CUDA."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("RWKV_JIT_ON", "0")
os.environ.setdefault("RWKV_CUDA_ON", "0")

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU, Triton kernels can only run under Triton's interpreter (tests/triton_interpret.py),
    # and Triton decides at import: set before anything in the session imports it.
    os.environ.setdefault("TRITON_INTERPRET", "1")
from cli_run import save_tiny_model
from eval_models import byte_rwkv
from torch import nn
from train_runs import prepare_corpus

import rwkvkit
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.testing import random_rwkv4_state_dict
from rwkvkit.tokenizer import ByteTokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RWKVKIT_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A file under ../shared, or skip the test saying what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests need the project's shared/ folder beside the repo")
    return path


def rwkvcpp_fixtures() -> Path:
    """rwkv.cpp's tiny model files ($RWKVKIT_FIXTURES, else shared/fixtures/rwkv-cpp-tiny), or skip."""
    if "RWKVKIT_FIXTURES" in os.environ:
        return Path(os.environ["RWKVKIT_FIXTURES"])
    return shared_path("fixtures", "rwkv-cpp-tiny")


@pytest.fixture
def fixtures_dir() -> Path:
    return rwkvcpp_fixtures()


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


# ---- fixtures several test files share (their helpers: eval_models.py, cli_run.py, train_runs.py)


@pytest.fixture
def tok() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture(scope="module")
def rwkv() -> nn.Module:
    """A small random byte-level RWKV-4 (eval_models.byte_rwkv)."""
    return byte_rwkv()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random byte-level RWKV-4 saved as a .pth, for the command-line tests."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pth")


@pytest.fixture(scope="module")
def loaded(model_path: Path) -> tuple[nn.Module, ByteTokenizer]:
    return rwkvkit.load_model(model_path), rwkvkit.load_tokenizer("byte")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny corpus prepared for training (train_runs.prepare_corpus)."""
    return prepare_corpus(tmp_path_factory.mktemp("corpus"), tmp_path_factory.mktemp("data"))


# ---- devices: every test that takes ``device`` runs on the CPU and, marked ``cuda``, on a GPU


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request: pytest.FixtureRequest) -> torch.device:
    """The CPU, then the GPU where there is one (``pytest -m cuda`` runs the GPU half alone)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here (torch.cuda.is_available() is False): the cuda-marked tests need one")
    return torch.device(request.param)


# ---- GGUF and llama.cpp (issue 14; helpers: world_models.py, llama_cpp_tools.py)


@pytest.fixture(scope="session")
def world_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random World-vocabulary RWKV-6 and RWKV-7 .pth files (world_models.CONFIGS)."""
    from world_models import save_world_models

    return save_world_models(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="session")
def llama_converted(tmp_path_factory: pytest.TempPathFactory, world_models: dict[str, Path]):
    """get(version, dtype) -> llama.cpp's own GGUF conversion (convert_hf_to_gguf.py) of world_models."""
    from llama_cpp_tools import find_converter, run_converter
    from world_models import converter_cache

    converter = find_converter()
    folder = tmp_path_factory.mktemp("llama-converted")
    return converter_cache(
        folder, world_models, lambda src, dst, outtype: run_converter(converter, src, dst, outtype)
    )
