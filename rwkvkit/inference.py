"""Making a loaded model fast for inference on the CPU, without changing what it computes.

:func:`optimize_for_inference` is what :func:`rwkvkit.load_model` applies: it swaps the linear
layers for :class:`~rwkvkit.ops.linear.FastLinear` (or :class:`~rwkvkit.ops.linear.Int8Linear`
/ :class:`~rwkvkit.ops.linear.Int4Linear` with ``quantize="int8"`` / ``"int4"``), lets go of the
checkpoint's file mapping, and derives the constants the model's one-token ``step`` uses
(:class:`~rwkvkit.models.common.StepConstants`). The layers pick their kernels when they are made:
the native CPU kernels (rwkvkit/ops/native.py) where they are built, started building in the
background on first use, else PyTorch's. RWKV models also get their whole
one-token step as one native call (:mod:`rwkvkit.fused`, falling back to the model's own step
wherever it cannot run); tests/test_inference.py and tests/test_fused.py compare the results with
the plain modules.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import torch
from torch import Tensor, nn

from . import fused
from .errors import RwkvkitError
from .models.common import prepare_step_constants
from .ops import native
from .ops.linear import FastLinear, Int4Linear, Int8Linear
from .quantize import swap_linear_layers

QUANTIZE_MODES = ("int8", "int4")
_LAYERS = {None: FastLinear.from_linear, "int8": Int8Linear.from_linear, "int4": Int4Linear.from_linear}


def optimize_for_inference(model: nn.Module, *, quantize: str | None = None) -> nn.Module:
    """Swap in the fast linear layers (in place) and prepare the step's constants; returns ``model``.

    ``quantize="int8"``: int8 weights (per-output-row scales) for every matrix except the embedding
    (a lookup, not a product); ``"int4"``: int4 weights in groups of 64 inputs with a scale and a
    minimum each. The embedding, layer norms and mixing vectors keep the model's dtype.
    """
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise RwkvkitError(f"unknown quantize={quantize!r}; choose one of {QUANTIZE_MODES} or None")
    on_cpu = any(p.device.type == "cpu" for p in model.parameters())
    if on_cpu:
        native.load(wait=False)
    swap_linear_layers(model, _LAYERS[quantize])
    _release_file_mappings(model)
    # after the release: derived from the final tensors
    prepare_step_constants(model, _lowrank_dtype(model, quantize, on_cpu))
    if on_cpu:
        fused.install(model)
    model.quantization = quantize  # type: ignore[assignment]
    return model


def _lowrank_dtype(model: nn.Module, quantize: str | None, on_cpu: bool) -> torch.dtype | None:
    """The dtype the step's low-rank matrices are stored in (RWKV-6/7; see StepConstants.prepare):
    bf16 where the native kernels read it (half float32's bytes) and the model's other weights
    are 16-bit or quantized anyway; float32 otherwise (None: as derived)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    narrow = quantize is not None or dtype in (torch.bfloat16, torch.float16)
    return torch.bfloat16 if on_cpu and narrow and native.ops() is not None else None


def _release_file_mappings(model: nn.Module) -> None:
    """Copy every tensor the swap did not create, so none still points into the checkpoint file,
    and every large one into memory advised for huge pages (:func:`huge_page_copy`).

    load_model memory-maps the file; the fast layers copy the matrices (a new layout, int8), and as
    long as any tensor (the embedding, a layer norm) still views the mapping, every page of the
    file read so far stays resident beside the copies: 1.45 GB instead of 0.95 GB for the 169M
    shape in fp32. Copying the rest (one tensor at a time) lets the mapping go.
    """
    fresh: set[int] = set()
    for module in model.modules():
        if isinstance(module, (Int8Linear, Int4Linear)) or (
            isinstance(module, FastLinear) and not module.weight.is_contiguous()
        ):
            fresh.update(id(t) for t in module.parameters(recurse=False))
            fresh.update(id(t) for t in module.buffers(recurse=False))
    done: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if id(t) in done or t.device.type != "cpu":
                    continue
                done.add(id(t))
                huge = huge_page_copy(t.data) if t.numel() * t.element_size() >= HUGE_PAGE else None
                if huge is not None:
                    t.data = huge
                elif id(t) not in fresh:
                    t.data = t.data.clone()


HUGE_PAGE = 2 << 20  # x86-64's transparent huge page


def huge_page_copy(t: Tensor) -> Tensor | None:
    """A copy of the contiguous CPU tensor ``t`` in private anonymous memory, 2 MB aligned and
    advised for transparent huge pages; None where that cannot be had (not Linux, ``t`` not
    contiguous: a column-major weight keeps its layout).

    Why: decoding streams every weight once per token, and with 4 KB pages that is a page-table
    walk every 4 KB. On the project's Xeon, while other machines on the host loaded the memory,
    those walks made one-row fp32 products stream 2.7-3.5 GB/s of weights against 4.8-9.1 GB/s
    from huge pages, and RWKV-4 169M fp32 decode went 9.4 -> 12.7 tokens/s (benchmarks/cpu_notes.md).
    Where the kernel gives no huge pages (THP off), the copy is an ordinary one.
    """
    if not hasattr(mmap, "MADV_HUGEPAGE") or not t.is_contiguous() or t.device.type != "cpu":
        return None
    nbytes = t.numel() * t.element_size()
    buf = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)  # before the first touch: the copy below faults in 2 MB pages
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    # the tensor keeps `buf` alive; the mapping goes with the tensor's last reference
    raw = torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=(-address) % HUGE_PAGE)
    return raw.view(t.dtype).view(t.shape).copy_(t)


# Below this many bytes of weights a decode step is a few hundred microseconds of small products,
# and a second thread's start and join cost more than it saves (the bundled 3.5M model ran at 0.9x
# with two threads; benchmarks/threads.py).
SMALL_MODEL_BYTES = 32 << 20


def default_threads(model: nn.Module) -> int:
    """The thread count decoding ``model`` runs best at here: 1 for small models, else one per
    physical core this process may use (benchmarks/threads.py measures the choice against every
    count). ``torch.set_num_threads`` (or ``--threads``) overrides it."""
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if weights < SMALL_MODEL_BYTES:
        return 1
    return max(1, physical_cores())


def physical_cores() -> int:
    """Cores (not hyper-threads) among the CPUs this process may run on."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        try:
            with (
                open(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_id") as f,
                open(f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id") as g,
            ):
                cores.add((g.read().strip(), f.read().strip()))
        except OSError:
            cores.add(("?", str(cpu)))
    return len(cores) or 1
