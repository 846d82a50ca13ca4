"""Naming a device (rwkvkit/device.py): one-line errors for a device this machine does not have,
from the library and from every verb that takes ``--device``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_run import rwkvkit_cli

import rwkvkit
from rwkvkit.device import THREADS_PER_CPU, resolve_device, set_cpu_threads, usable_cpus
from rwkvkit.errors import RwkvkitError

NO_GPU = not torch.cuda.is_available()


def test_cpu_and_torch_devices_pass() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("meta").type == "meta"


@pytest.mark.parametrize("spec", ["blah", "cuda:x", "gpu", ""])
def test_unknown_device_is_refused(spec: str) -> None:
    with pytest.raises(RwkvkitError, match=r"unknown device .*use cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_missing_gpu_is_refused() -> None:
    if NO_GPU:
        with pytest.raises(RwkvkitError, match=r"not available: this PyTorch sees no CUDA GPU.*--device cpu"):
            resolve_device("cuda")
    with pytest.raises(RwkvkitError, match="cuda:99"):
        resolve_device("cuda:99")


def test_load_model_refuses_before_reading(tmp_path: Path) -> None:
    """The device is checked first: a missing file is not even opened."""
    with pytest.raises(RwkvkitError, match="unknown device"):
        rwkvkit.load_model(tmp_path / "absent.pth", device="blah")


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "--device", "blah", "--prompt", "hi", "--max-tokens", "1"],
        ["generate", "--device", "cuda:99", "--prompt", "hi", "--max-tokens", "1"],
        ["chat", "--device", "nope"],
    ],
)
def test_cli_device_errors_are_one_line(args: list[str]) -> None:
    proc = rwkvkit_cli(*args, stdin="", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"rwkvkit {args[0]}: error: ") and "device" in lines[0]


def test_train_device_error_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    proc = rwkvkit_cli(
        "train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--device", "cuda:99", check=False
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "cuda:99" in lines[0] and "Traceback" not in proc.stderr


def test_training_ranks_take_their_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun (LOCAL_RANK) a device without an index becomes the rank's own GPU; an index
    given is kept. (torch.cuda's answers are stood in for: this runs without a GPU too.)"""
    from rwkvkit.train.config import TrainConfig
    from rwkvkit.train.device import pick_device

    def device(name: str) -> torch.device:
        return pick_device(TrainConfig(data="d", out="o", device=name))

    if NO_GPU:
        assert device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device("auto") == device("cuda") == torch.device("cuda", 1)
    assert device("cuda:0") == torch.device("cuda", 0)
    assert device("cpu") == torch.device("cpu")
    with pytest.raises(RwkvkitError, match="cuda:2"):
        device("cuda:2")


@pytest.mark.parametrize("threads", [0, -1, 10**9])
def test_thread_counts_no_machine_can_use_are_refused(threads: int) -> None:
    before = torch.get_num_threads()
    with pytest.raises(RwkvkitError, match=f"--threads {threads}: this machine has"):
        set_cpu_threads(threads)
    assert torch.get_num_threads() == before


def test_thread_counts_up_to_the_bound_are_set() -> None:
    before = torch.get_num_threads()
    try:
        set_cpu_threads(THREADS_PER_CPU * usable_cpus())
        assert torch.get_num_threads() == THREADS_PER_CPU * usable_cpus()
        set_cpu_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
