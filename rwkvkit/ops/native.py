"""The native CPU kernels (rwkvkit/csrc/cpu_kernels.cpp): built once per machine, then loaded.

Decoding streams every weight once per token. PyTorch's own one-row kernels read 16-bit and 8-bit
weights slower than float32 ones per element (bf16 ``torch.mv`` ~16 GB/s, fp16 ``F.linear`` ~15,
``_weight_int8pack_mm`` ~14 GB/s of int8, where fp32 streams ~25 GB/s), and neither ``torch.compile``
(default, or max-autotune with frozen weights) nor any other ATen op closed that gap in
benchmarks/kernels.py; the C++ loops do (bf16/fp16 ~23 GB/s, int8 ~35 GB/s). So the file is
compiled here, with the compiler PyTorch's own extensions use, for this CPU (``-march=native``),
into ``~/.cache/rwkvkit/kernels/<key>/`` where ``key`` hashes the source, torch's version, the
compiler and the CPU: the first use on a machine pays ~30-60 s once, every later process loads
the library in milliseconds.

How the build is paid: :func:`load` with ``wait=True`` builds in this process (benchmarks, tests);
``wait=False`` (what ``load_model`` uses) starts the build in a background process and returns at
once, so the first run is never held up: it runs the PyTorch kernels and says so once on stderr,
and every later process finds the library built. Without a C++ compiler, or on a CPU without
AVX-512 (F, BW, VL, VNNI, BF16), nothing is built and the PyTorch kernels run: also said once.

The ops live in ``torch.ops.rwkvkit`` with fake (shape) implementations registered, so
``torch.compile`` traces through them. :func:`ops` returns that namespace or None.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "cpu_kernels.cpp"
# Instruction sets the kernels are written with (names as /proc/cpuinfo spells them).
REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "f16c")
CFLAGS = ["-O3", "-march=native", "-std=c++17", "-fno-math-errno"]

_lock = threading.Lock()
_state = SimpleNamespace(ops=None, off=0, said=set(), building=None, backends={})


def say_once(message: str) -> None:
    """One line on stderr, once per process for each distinct message."""
    if message not in _state.said:
        _state.said.add(message)
        print(f"rwkvkit: {message}", file=sys.stderr)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def compiler() -> str | None:
    """The C++ compiler PyTorch's extension builder will call (``$CXX``, else ``c++``), if present."""
    name = os.environ.get("CXX", "c++")
    return shutil.which(name)


def unsupported_reason() -> str | None:
    """Why the native kernels cannot be built here, or None if they can."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the native CPU kernels are x86-64 only (this is {platform.machine()})"
    missing = [f for f in REQUIRED_CPU_FLAGS if f not in cpu_flags()]
    if missing:
        return f"this CPU lacks {', '.join(missing)}, which the native CPU kernels need"
    if compiler() is None:
        return "no C++ compiler found (install g++ or set CXX) to build the native CPU kernels"
    return None


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rwkvkit" / "kernels"


def build_key() -> str:
    """What the built library depends on: the source, torch, the compiler, the CPU."""
    cxx = compiler() or ""
    try:
        cxx_version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        cxx_version = ""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), cxx.encode(), cxx_version.encode(),
                 " ".join(sorted(cpu_flags())).encode(), " ".join(CFLAGS).encode()):  # fmt: skip
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _library_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.so"


def _register_fakes() -> None:
    """Shapes for tracing (torch.compile): the ops' outputs without running them."""
    lib = "rwkvkit::"

    def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x.new_empty(x.shape[0], w.shape[0])

    def quantized(x: torch.Tensor, packed: torch.Tensor, params: torch.Tensor, n_out: int) -> torch.Tensor:
        return x.new_empty(x.shape[0], n_out)

    for op in ("linear_f32", "linear_bf16", "linear_f16"):
        torch.library.register_fake(lib + op)(linear)
    for op in ("linear_q8", "linear_q4"):
        torch.library.register_fake(lib + op)(quantized)

    @torch.library.register_fake(lib + "wkv7_step")
    def _wkv7(r: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(r)

    @torch.library.register_fake(lib + "wkv4_step")
    def _wkv4(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, *rest: torch.Tensor) -> list[torch.Tensor]:
        return [torch.empty_like(k) for _ in range(4)]

    @torch.library.register_fake(lib + "wkv5_step")
    def _wkv5(r: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(r)


def _build(folder: Path, name: str) -> None:
    from torch.utils import cpp_extension

    folder.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name=name,
        sources=[str(SOURCE)],
        extra_cflags=CFLAGS,
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )


def _load_built(path: Path) -> Any:
    torch.ops.load_library(str(path))
    _register_fakes()
    _register_wkv_backends(torch.ops.rwkvkit)
    return torch.ops.rwkvkit


def _register_wkv_backends(ops: Any) -> None:
    """The WKV-4, WKV-5/6 and WKV-7 recurrences join their ops' registries as the CPU float32
    backend: the one-token step and the token-by-token sequence form (prefill; cheaper on a CPU
    than the chunked PyTorch forms' many small operations). No autograd: with gradients wanted,
    or head sizes the loops do not take, the PyTorch forms run."""
    from . import wkv4, wkv5, wkv7
    from .registry import Backend

    def portable(*ts: torch.Tensor) -> bool:  # the kernels' loops take head sizes in steps of 16
        return ts[-1].shape[-1] % 16 != 0 or (torch.is_grad_enabled() and any(t.requires_grad for t in ts))

    def wkv7_step(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if portable(*args):
            return wkv7.wkv7_step(*args)
        *vecs, state = (t.contiguous() for t in args)
        out = torch.empty_like(state)
        return ops.wkv7_step(*vecs, state, out), out

    def wkv7_sequence(*args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        *tensors, chunk_len = args
        if portable(*tensors):
            return wkv7.wkv7_chunked(*args)
        y, state = ops.wkv7_seq(*(t.contiguous() for t in tensors))
        return y, state

    def wkv5_step(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if portable(*args):
            return wkv5.wkv5_step(*args)
        *vecs, state = (t.contiguous() for t in args)
        out = torch.empty_like(state)
        return ops.wkv5_step(*vecs, state, out), out

    def wkv5_sequence(*args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        *tensors, chunk_len = args
        if portable(*tensors):
            return wkv5.wkv5_chunked(*args)
        r, log_w, k, v, u, state = tensors
        log_w = log_w.expand_as(r)  # RWKV-5's decay is the same at every token
        y, state = ops.wkv5_seq(*(t.contiguous() for t in (r, log_w, k, v, u, state)))
        return y, state

    def wkv4_step(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: Any) -> Any:
        if portable(w, u, v, *state, k):  # k last: its width is the one the loops take
            return wkv4.wkv4_step(w, u, k, v, state)
        out, *new = ops.wkv4_step(*(t.contiguous() for t in (w, u, k, v, *state)))
        return out, tuple(new)

    def wkv4_sequence(
        w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: Any, chunk_len: int
    ) -> Any:
        if portable(w, u, v, *state, k):
            return wkv4.wkv4_chunked_matmul(w, u, k, v, state, chunk_len)
        out, *new = ops.wkv4_seq(*(t.contiguous() for t in (w, u, k, v, *state)))
        return out, tuple(new)

    _state.backends = {
        wkv4.BACKENDS: Backend("native", step=wkv4_step, sequence=wkv4_sequence),
        wkv7.BACKENDS: Backend("native", step=wkv7_step, sequence=wkv7_sequence),
        wkv5.BACKENDS: Backend("native", step=wkv5_step, sequence=wkv5_sequence),
    }
    for registry, backend in _state.backends.items():
        registry.register(backend, "cpu", torch.float32)


def load(*, wait: bool = True) -> Any:
    """``torch.ops.rwkvkit`` with the native kernels loaded, or None where they cannot run.

    ``wait=True`` builds the library now if it is not cached (once per machine); ``wait=False``
    starts that build in a background process and returns None until a later call finds it built.
    """
    if _state.off:
        return None
    if _state.ops is not None:
        return _state.ops
    with _lock:
        if _state.ops is not None:
            return _state.ops
        reason = unsupported_reason()
        if reason is not None:
            say_once(f"{reason}; the portable PyTorch kernels run instead")
            return None
        key = build_key()
        folder = cache_root() / key
        name = f"rwkvkit_cpu_{key}"
        path = _library_path(folder, name)
        if path.exists():
            _state.ops = _load_built(path)
            return _state.ops
        if not wait:
            _start_background_build()
            say_once(
                f"building the native CPU kernels in the background (once per machine, about a minute; "
                f"cached in {cache_root()}); this run uses the portable PyTorch kernels"
            )
            return None
        say_once(
            f"building the native CPU kernels (once per machine, about a minute; cached in {cache_root()})"
        )
        try:
            _build(folder, name)
        except Exception as e:  # a compiler error must not stop inference: the portable path runs
            say_once(f"building the native CPU kernels failed ({str(e).strip().splitlines()[-1]}); "
                     "the portable PyTorch kernels run instead")  # fmt: skip
            return None
        _state.ops = _load_built(path)
        return _state.ops


def _start_background_build() -> None:
    if _state.building is not None:
        return
    log = cache_root() / "build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        _state.building = subprocess.Popen(
            [sys.executable, "-m", "rwkvkit.ops.native", "--build"],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives this process; niced below so it yields to the run
            preexec_fn=lambda: os.nice(10),
        )


def ops() -> Any:
    """The loaded native ops, or None (never builds: see :func:`load`)."""
    return None if _state.off else _state.ops


@contextlib.contextmanager
def disabled() -> Any:
    """Run the portable PyTorch kernels inside the block (tests compare the two paths)."""
    _state.off += 1
    for registry in _state.backends:
        registry.unregister("cpu", torch.float32)
    try:
        yield
    finally:
        _state.off -= 1
        if not _state.off:
            for registry, backend in _state.backends.items():
                registry.register(backend, "cpu", torch.float32)


def main(argv: list[str] | None = None) -> int:
    """``python -m rwkvkit.ops.native --build``: build (or find) the library; print where it is."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--build"]):
        print("usage: python -m rwkvkit.ops.native [--build]", file=sys.stderr)
        return 2
    loaded = load(wait=True)
    if loaded is None:
        return 1
    print(f"native CPU kernels: {cache_root() / build_key()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
