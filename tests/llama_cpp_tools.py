"""llama.cpp for the GGUF tests: its own converter (pure Python, from the llama-cpp-python sdist) and,
where ``llama_cpp`` is installed, the library itself.

The converter ``convert_hf_to_gguf.py`` needs its ``conversion/`` package, ``gguf-py/`` and the chat
template under ``models/templates/``. They are taken from, in order:
1. ``$RWKVKIT_LLAMA_CPP``: a llama.cpp source folder (one holding convert_hf_to_gguf.py), an unpacked
   llama-cpp-python sdist, or the sdist tarball;
2. the test cache (``$RWKVKIT_TEST_CACHE``, else ~/.cache/rwkvkit-tests), where an earlier run put them;
3. the sdist fetched by pip (``pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36``)
   into that cache.
If none works the tests that need it skip, saying why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
_NEEDED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/llama-cpp-rwkv-world.jinja")


def cache_dir() -> Path:
    return Path(os.environ.get("RWKVKIT_TEST_CACHE", Path.home() / ".cache" / "rwkvkit-tests"))


def _is_source(folder: Path) -> bool:
    return (folder / "convert_hf_to_gguf.py").is_file() and (folder / "conversion").is_dir()


def _extract(tarball: Path, into: Path) -> Path:
    """The converter's files out of the sdist tarball, into ``into`` (a temp folder renamed at the end)."""
    prefix = f"{SDIST}/vendor/llama.cpp/"
    tmp = into.with_name(into.name + ".partial")
    with tarfile.open(tarball) as tar:
        members = [
            m for m in tar.getmembers()
            if m.name.startswith(prefix) and m.name[len(prefix):].startswith(_NEEDED) and (m.isfile() or m.isdir())
        ]  # fmt: skip
        for m in members:
            m.name = m.name[len(prefix) :]
        tar.extractall(tmp, members=members, filter="data")
    tmp.rename(into)
    return into


def find_converter() -> Path:
    """A folder holding llama.cpp's convert_hf_to_gguf.py with what it imports, or skip."""
    given = os.environ.get("RWKVKIT_LLAMA_CPP")
    target = cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"
    if given:
        path = Path(given)
        for folder in (path, path / "vendor" / "llama.cpp"):
            if _is_source(folder):
                return folder
        if path.is_file() and not _is_source(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            return _extract(path, target)
    if _is_source(target):
        return target
    download = cache_dir() / "sdist"
    tarball = download / f"{SDIST}.tar.gz"
    if not tarball.is_file():
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(download),
             f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if proc.returncode != 0 or not tarball.is_file():
            pytest.skip(
                "llama.cpp's converter is unavailable: set RWKVKIT_LLAMA_CPP to a llama.cpp source folder or the "
                f"llama-cpp-python sdist ({SDIST}.tar.gz); pip download failed: {proc.stderr.strip()[-300:]}"
            )
    return _extract(tarball, target)


def run_converter(converter: Path, folder: Path, out: Path, outtype: str) -> Path:
    """llama.cpp's convert_hf_to_gguf.py on a Hugging Face folder; ``outtype`` f32, f16, bf16 or q8_0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_LOCAL_GGUF": ""}
    env.pop("NO_LOCAL_GGUF")  # its bundled gguf-py, as llama.cpp's users run it
    proc = subprocess.run(
        [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(folder), "--outfile", str(out),
         "--outtype", outtype],
        capture_output=True, text=True, timeout=600, env=env, cwd=converter,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def llama_cpp_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits (T, V) for ``tokens`` fed in one call, through llama-cpp-python.

    Runs with llama.cpp's CPU "extra buffer types" (AMX / repacked weights) off: in 0.3.36 the AMX
    path segfaults on RWKV-7 Q8_0 files on AMX machines (the kind of AMX mul_mat crash reported in
    ggml-org/llama.cpp#20824), whoever wrote the file; the plain CPU kernels compute the same model."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (benchmarks/setup.sh)"
    )
    low = llama_cpp.llama_cpp
    default = low.llama_model_default_params

    def params() -> object:
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        llm = llama_cpp.Llama(
            model_path=str(path), logits_all=True, n_ctx=max(64, len(tokens)), n_threads=1,
            n_batch=len(tokens), verbose=False,
        )  # fmt: skip
    finally:
        low.llama_model_default_params = default
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def llama_quantize(src: Path, dst: Path, ftype: str) -> Path:
    """llama.cpp's quantizer (llama-quantize's library call) on a GGUF file; ``ftype`` as in
    llama.cpp's LLAMA_FTYPE_MOSTLY_<ftype> (Q4_0, Q4_K_M, ...)."""
    import ctypes

    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (benchmarks/setup.sh)"
    )
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize({ftype}) returned {rc}"
    return dst
