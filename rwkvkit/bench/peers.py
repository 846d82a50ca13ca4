"""The peers ``rwkvkit bench`` measures ours against, each behind the same Contender interface:
the official ``rwkv`` package, ``transformers``' RwkvForCausalLM, and rwkv.cpp (the ``rwkv-cpp``
sdist). Each is imported when asked for: they are optional (benchmarks/setup.sh installs them),
and a missing one raises ImportError, which build_contenders turns into a note.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..convert import convert
from .timing import Contender

PEERS = ("rwkv-fp32", "rwkv-bf16", "hf-fp32", "rwkvcpp-fp32", "rwkvcpp-fp16")


def official_contender(path: Path, strategy: str) -> Contender:
    """The official ``rwkv`` package (its default settings: TorchScript on unless RWKV_JIT_ON=0)."""
    from rwkv.model import RWKV  # type: ignore[import-not-found]

    model = RWKV(str(path.with_suffix("")), strategy, verbose=False)

    def make_step(batch: int) -> Callable[[], None]:
        box: list[Any] = [None, 0]

        def step() -> None:
            with torch.inference_mode():
                logits, box[0] = model.forward([box[1]], box[0])
            box[1] = int(logits.argmax())

        return step

    def prefill(tokens: list[int]) -> None:
        with torch.inference_mode():
            model.forward(tokens, None)

    return Contender(f"rwkv {strategy}", make_step, prefill)


def hf_contender(path: Path, workdir: Path) -> Contender:
    """transformers' RwkvForCausalLM on the same weights (converted with ``rwkvkit convert --to hf``)."""
    from transformers import RwkvForCausalLM  # type: ignore[import-not-found]

    folder = workdir / (path.stem + "-hf")
    if not (folder / "config.json").exists():
        convert(path, folder, "hf")
    model = RwkvForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()

    def make_step(batch: int) -> Callable[[], None]:
        box: list[Any] = [None, torch.zeros(1, 1, dtype=torch.long)]

        def step() -> None:
            with torch.inference_mode():
                out = model(input_ids=box[1], state=box[0], use_cache=True)
            box[0] = out.state
            box[1] = out.logits[:, -1].argmax(-1, keepdim=True)

        return step

    def prefill(tokens: list[int]) -> None:
        with torch.inference_mode():
            model(input_ids=torch.tensor([tokens]), use_cache=True)

    return Contender("transformers fp32", make_step, prefill)


def rwkvcpp_contender(path: Path, workdir: Path, data_type: str, threads: int) -> Contender:
    """rwkv.cpp (the ``rwkv-cpp`` 0.0.1 sdist), file made by its own converter; one token per call."""
    import importlib.util

    spec = importlib.util.find_spec("rwkv_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("rwkv_cpp is not installed", name="rwkv_cpp")
    # The sdist's modules import each other as top-level modules, and its package __init__ fails
    # for that reason: put its folder on the path and load the library file it ships directly.
    pkg = Path(next(iter(spec.submodule_search_locations)))
    sys.path.insert(0, str(pkg))
    import rwkv_cpp_model  # type: ignore[import-not-found]
    import rwkv_cpp_shared_library  # type: ignore[import-not-found]

    out = workdir / f"{path.stem}-rwkvcpp-{data_type}.bin"
    if not out.exists():
        subprocess.run(
            [sys.executable, str(pkg / "convert_pytorch_to_ggml.py"), str(path), str(out), data_type],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    lib = rwkv_cpp_shared_library.RWKVSharedLibrary(str(pkg / "librwkv.so"))
    model = rwkv_cpp_model.RWKVModel(lib, str(out), thread_count=threads)

    def make_step(batch: int) -> Callable[[], None]:
        logits, state = model.eval(0, None)
        bufs = [state, state.clone()]
        box = [0, int(logits.argmax())]

        def step() -> None:
            src, dst = bufs[box[0]], bufs[1 - box[0]]
            model.eval(box[1], src, dst, logits)
            box[0] = 1 - box[0]
            box[1] = int(logits.argmax())

        return step

    short = {"float32": "fp32", "float16": "fp16"}[data_type]
    return Contender(f"rwkv.cpp {short}", make_step, None)
