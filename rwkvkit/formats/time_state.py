"""The official layout of a tuned initial state: ``blocks.N.att.time_state``, (H, N, N) per layer.

RWKV-PEFT's state tuning saves the learned WKV state of every layer under this key, in a .pth of
its own or merged into the model file, where the official ``rwkv`` package (RWKV-5/6) reads it as
the initial state. Its orientation is [head, value, key]: RWKV-PEFT hands
``time_state.transpose(1, 2)`` to flash-linear-attention, whose state is [key, value], and the
``rwkv`` package transposes it the same way. rwkvkit's RWKV-5/6 state is [key, value] and its
RWKV-7 state [value, key], so 5/6 transpose and 7 does not. Only the WKV state is in the layout;
the token-shift parts of the state start at zero. RWKV-4 has no such layout (its state is a few
vectors, and no official tool tunes it).
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from ..errors import StateError
from ..state import RecurrentState

VERSIONS = ("5", "6", "7")
_KEY = re.compile(r"^blocks\.(\d+)\.att\.time_state$")


def time_state_key(layer: int) -> str:
    return f"blocks.{layer}.att.time_state"


def is_time_state_key(key: str) -> bool:
    return _KEY.match(key) is not None


def split_time_state(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A state dict's weights, and its ``time_state`` tensors (empty when it has none)."""
    weights = {k: v for k, v in sd.items() if not _KEY.match(k)}
    return weights, {k: v for k, v in sd.items() if _KEY.match(k)}


def is_torch_file(head: bytes) -> bool:
    """Whether a file's first 9 bytes open a torch.save file (a zip, or a pickle stream of protocol
    2-5), not a safetensors one: whose 8-byte header length may start with 0x80 too, but whose
    header itself starts with ``{``."""
    if head[:4] == b"PK\x03\x04":
        return True
    return head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and head[8:9] != b"{"


def read_file(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a state file in the official layout: a .pth (read with ``weights_only``, so
    nothing in it runs) or a .safetensors."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    try:
        if is_torch_file(head):
            with warnings.catch_warnings():  # torch's warnings about odd files: the error says it
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with safe_open(str(path), framework="pt") as f:
                obj = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError,
            SafetensorError) as e:  # fmt: skip
        raise StateError(f"{path}: not a readable state file ({str(e).splitlines()[0]})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise StateError(f"{path}: not a readable state file (it holds no dict of tensors)")
    return obj


def _transposed(version: str) -> bool:
    """Whether rwkvkit's WKV state of this version is the official time_state transposed."""
    return version in ("5", "6")


def _version(model: nn.Module, where: str | Path) -> str:
    version = str(getattr(getattr(model, "config", None), "version", ""))
    if version not in VERSIONS:
        raise StateError(
            f"{where}: an official time_state is the WKV state of RWKV-5, 6 or 7; this is an "
            f"RWKV-{version} model (use an rwkvkit state file)"
        )
    return version


def to_state(time_state: dict[str, Tensor], model: nn.Module, where: str | Path) -> RecurrentState:
    """The batch-1 state that official ``time_state`` tensors describe, for ``model``."""
    version = _version(model, where)
    device = model.emb.weight.device  # type: ignore[union-attr]
    zeros = type(model.initial_state(1)).zeros(model.config, 1, device)  # type: ignore[operator, attr-defined]
    L, _, H, N, _ = zeros.wkv.shape  # type: ignore[attr-defined]
    layers = sorted(int(_KEY.match(k).group(1)) for k in time_state if _KEY.match(k))  # type: ignore[union-attr]
    others = [k for k in time_state if not _KEY.match(k)]
    if others or layers != list(range(L)):
        raise StateError(
            f"{where}: expected blocks.0 .. blocks.{L - 1}.att.time_state for this {L}-layer model, "
            f"found {len(layers)} time_state keys{' and ' + ', '.join(others[:3]) if others else ''}"
        )
    wkv = []
    for i in range(L):
        t = time_state[time_state_key(i)]
        if tuple(t.shape) != (H, N, N):
            raise StateError(
                f"{where}: {time_state_key(i)} has shape {tuple(t.shape)}, this model's is {(H, N, N)}"
            )
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise StateError(f"{where}: {time_state_key(i)} is not a finite floating-point tensor")
        t = t.float()
        wkv.append(t.transpose(-1, -2) if _transposed(version) else t)
    return dataclasses.replace(zeros, wkv=torch.stack(wkv)[:, None].to(device).contiguous())


def from_state(state: RecurrentState, version: str) -> dict[str, Tensor]:
    """The official ``time_state`` tensors of a batch-1 state's WKV part (float32, on the CPU)."""
    if version not in VERSIONS:
        raise StateError(f"RWKV-{version} has no official time_state layout (RWKV-5, 6 and 7 do)")
    wkv = state.wkv.detach().float().cpu()  # type: ignore[attr-defined]  # (L, 1, H, N, N)
    return {
        time_state_key(i): (w[0].transpose(-1, -2) if _transposed(version) else w[0]).contiguous()
        for i, w in enumerate(wkv)
    }
