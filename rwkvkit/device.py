"""The device a user names (``--device``, ``load_model(device=)``), checked before anything is put on it.

PyTorch answers a device it cannot use with an assertion deep inside its CUDA initialisation
("Torch not compiled with CUDA enabled"), or a list of every device type it knows; this says in
one line what is wrong and what to pass instead.
"""

from __future__ import annotations

import os

import torch

from .errors import ConfigError, RwkvkitError


def resolve_device(spec: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a torch.device -> the torch.device, if this machine has it."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise RwkvkitError(f"unknown device {spec!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RwkvkitError(
                f"device {str(device)!r} is not available: this PyTorch sees no CUDA GPU "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise RwkvkitError(f"device {str(device)!r} does not exist: this machine has {count} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RwkvkitError("device 'mps' is not available on this machine; use --device cpu")
    return device


THREADS_PER_CPU = 4  # more threads than this per usable CPU only slows PyTorch down


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_cpu_threads(threads: int, flag: str = "--threads") -> None:
    """``torch.set_num_threads``, refusing a count no machine can use: OpenMP would try to allocate
    per-thread memory for all of them (``--threads 1000000000`` asks libgomp for 216 GB and aborts)."""
    most = THREADS_PER_CPU * usable_cpus()
    if not 1 <= threads <= most:
        raise ConfigError(f"{flag} {threads}: this machine has {usable_cpus()} CPU(s); pass 1 to {most}")
    torch.set_num_threads(threads)
