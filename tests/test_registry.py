"""The backend registry's loaders (rwkvkit/ops/registry.py): run once, at the first lookup on their
device type, kept out of the way by a hand-registered backend or ``RWKVKIT_KERNELS=torch``, and a
missing or broken package leaves the PyTorch forms in place."""

from __future__ import annotations

import pytest
import torch
from triton_interpret import interpreted

from rwkvkit.ops import wkv4, wkv5, wkv7
from rwkvkit.ops.registry import Backend, BackendRegistry

DEFAULT = Backend("torch", step=lambda: "step", sequence=lambda: "sequence")
KERNEL = Backend("kernel", step=lambda: "kernel step", sequence=lambda: "kernel sequence")
calls: list[str] = []


def load_kernel() -> Backend:
    calls.append("load")
    return KERNEL


def load_nothing() -> None:
    calls.append("load")


def load_broken() -> Backend:
    raise RuntimeError("built for another Triton")


@pytest.fixture(autouse=True)
def _fresh_calls(monkeypatch: pytest.MonkeyPatch):
    calls.clear()
    monkeypatch.delenv("RWKVKIT_KERNELS", raising=False)


def test_loader_runs_once_at_the_first_lookup_on_its_device() -> None:
    reg = BackendRegistry("op", DEFAULT, loaders={"cpu": "test_registry:load_kernel"})
    assert calls == []  # nothing imported or run when the registry is made
    x = torch.zeros(2)
    assert reg.lookup(x) is KERNEL and reg.lookup(x) is KERNEL
    assert calls == ["load"]
    assert reg.lookup(x.double()) is KERNEL  # registered for every dtype of its device


def test_other_devices_never_run_the_loader() -> None:
    reg = BackendRegistry("op", DEFAULT, loaders={"cuda": "test_registry:load_kernel"})
    assert reg.lookup(torch.zeros(2)) is DEFAULT
    assert calls == []


def test_hand_registered_backend_is_kept() -> None:
    reg = BackendRegistry("op", DEFAULT, loaders={"cpu": "test_registry:load_kernel"})
    mine = Backend("mine", step=lambda: 0, sequence=lambda: 0)
    reg.register(mine, "cpu")
    assert reg.lookup(torch.zeros(2)) is mine


def test_environment_switch_keeps_the_pytorch_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RWKVKIT_KERNELS", "torch")
    reg = BackendRegistry("op", DEFAULT, loaders={"cpu": "test_registry:load_kernel"})
    assert reg.lookup(torch.zeros(2)) is DEFAULT
    assert calls == []


@pytest.mark.parametrize(
    "loader",
    ["test_registry:load_nothing", "rwkvkit_no_such_package.kernels:load", "test_registry:load_broken"],
)
def test_no_backend_missing_or_broken_package_falls_back(loader: str) -> None:
    reg = BackendRegistry("op", DEFAULT, loaders={"cpu": loader})
    if loader.endswith("broken"):
        with pytest.warns(
            UserWarning, match="op: the cpu kernels failed to load.*another Triton.*using PyTorch"
        ):
            assert reg.lookup(torch.zeros(2)) is DEFAULT
    else:
        assert reg.lookup(torch.zeros(2)) is DEFAULT
    assert reg.lookup(torch.zeros(2)) is DEFAULT  # tried once only


def test_ops_offer_their_cuda_kernels() -> None:
    """Each op's registry names its CUDA loader, and the path resolves to a real function (imported
    under Triton's interpreter, as the kernel tests import it, so they can still run here)."""
    for op in (wkv4, wkv5, wkv7):
        path = op.BACKENDS._loaders.get("cuda")
        if path is None:  # a GPU process has loaded it already
            assert op.BACKENDS.lookup(torch.zeros(1, device="cuda")).name in ("triton", "fla")
            continue
        module, function = path.split(":")
        (mod,) = interpreted("rwkvkit.ops" + module)
        assert callable(getattr(mod, function))
