"""The torch device a user names (``--device``, ``load_model(device=)``), checked to exist here."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch device this machine has; an unknown name, or a GPU that is not there,
    is a :class:`ConfigError` naming the choices rather than an error at the first tensor."""
    if isinstance(name, torch.device):
        device = name
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError, ValueError):
            raise ConfigError(
                f"unknown --device {name!r}; use cpu, cuda, cuda:N (a GPU index) or mps"
            ) from None
    problem = _missing(device)
    if problem:
        raise ConfigError(f"--device {name}: {problem}; use cpu")
    return device


def _missing(device: torch.device) -> str | None:
    """Why this machine cannot run on ``device``, or None if it can."""
    if device.type in ("cpu", "meta"):
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "this machine (or this build of torch) has no CUDA GPU"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"there is no GPU {device.index}; this machine has {torch.cuda.device_count()}"
        return None
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else "MPS is not available on this machine"
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    return None if available is not None and available() else f"no {device.type} device on this machine"
