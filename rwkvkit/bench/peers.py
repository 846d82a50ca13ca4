"""The peers ``rwkvkit bench`` measures ours against, each behind the same Contender interface:
the official ``rwkv`` package, ``transformers``' RwkvForCausalLM, rwkv.cpp (the ``rwkv-cpp``
sdist) and llama.cpp (``llama-cpp-python``, GGUF files made by llama.cpp's own converter). Each is
imported when asked for: they are optional (benchmarks/setup.sh installs them), and a missing one
raises ImportError, which build_contenders turns into a note.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_checkpoint
from ..convert import convert
from ..errors import RwkvkitError
from .timing import Contender

PEERS = ("rwkv-fp32", "rwkv-bf16", "hf-fp32", "rwkvcpp-fp32", "rwkvcpp-fp16",
         "llamacpp-f32", "llamacpp-f16", "llamacpp-q8_0", "llamacpp-q4_0")  # fmt: skip
# Where benchmarks/setup.sh unpacks llama.cpp's converter (convert_hf_to_gguf.py, conversion/,
# gguf-py/) from the llama-cpp-python sdist: the converter of the same llama.cpp that runs.
LLAMA_CPP_DIR = Path.home() / ".cache" / "rwkvkit" / "llama.cpp"
VOCAB = Path(__file__).resolve().parents[1] / "data" / "vocab" / "rwkv_vocab_v20230424.txt"


def _official_rwkv_class(version: str) -> Any:
    """The official package's model class for this version. Its RWKV-7 class replaces the others
    when RWKV_V7_ON=1 is set at import, so for RWKV-7 a second copy of the module is loaded with
    it set, and every version can be measured in one process."""
    if version != "7":
        from rwkv.model import RWKV  # type: ignore[import-not-found]

        return RWKV
    name = "_rwkvkit_official_rwkv7"
    if name not in sys.modules:
        spec = importlib.util.find_spec("rwkv.model")
        if spec is None or spec.origin is None:
            raise ImportError("rwkv is not installed", name="rwkv")
        copy_spec = importlib.util.spec_from_file_location(name, spec.origin)
        assert copy_spec is not None and copy_spec.loader is not None
        module = importlib.util.module_from_spec(copy_spec)
        saved = {k: os.environ.get(k) for k in ("RWKV_V7_ON", "RWKV_JIT_ON", "RWKV_CUDA_ON")}
        os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON=saved["RWKV_JIT_ON"] or "1", RWKV_CUDA_ON="0")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it announces itself on import
                copy_spec.loader.exec_module(module)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        sys.modules[name] = module
    return sys.modules[name].RWKV_x070


def official_contender(path: Path, strategy: str) -> Contender:
    """The official ``rwkv`` package (its default settings: TorchScript on unless RWKV_JIT_ON=0)."""
    version = read_checkpoint(path).version
    cls = _official_rwkv_class(version)
    if version == "7":
        with contextlib.redirect_stdout(io.StringIO()):  # RWKV_x070 has no verbose switch
            model = cls(str(path.with_suffix("")), strategy)
    else:
        model = cls(str(path.with_suffix("")), strategy, verbose=False)

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


def gguf_file(
    path: Path, workdir: Path, outtype: str, converter_dir: Path | None = None, threads: int = 1
) -> Path:
    """A GGUF file of the checkpoint at ``path`` (RWKV-6 or RWKV-7) made by llama.cpp's own tools,
    cached in ``workdir``: the weights are written as the Hugging Face folder llama.cpp's converter
    reads (flash-linear-attention's RWKV7ForCausalLM for RWKV-7, Rwkv6ForCausalLM for RWKV-6, with
    the World vocabulary file beside them), converted at f32, f16 or q8_0 by
    ``convert_hf_to_gguf.py``, and quantized to q4_0 from f32 by ``llama_model_quantize``."""
    out = workdir / f"{path.stem}-{outtype}.gguf"
    if out.exists():
        return out
    if outtype == "q4_0":
        import llama_cpp  # type: ignore[import-not-found]

        source = gguf_file(path, workdir, "f32", converter_dir, threads)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
        params.nthread = threads
        tmp = out.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise RwkvkitError(f"llama.cpp could not quantize {source} to q4_0")
        tmp.replace(out)
        return out
    converter = (converter_dir or LLAMA_CPP_DIR) / "convert_hf_to_gguf.py"
    if not converter.exists():
        raise ImportError(f"llama.cpp's converter is not in {converter.parent}", name="convert_hf_to_gguf")
    folder = _hf_folder_for_llama_cpp(path, workdir)
    tmp = out.with_suffix(".tmp")
    proc = subprocess.run(
        [sys.executable, str(converter), str(folder), "--outtype", outtype, "--outfile", str(tmp)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RwkvkitError(
            f"llama.cpp's converter failed on {folder}: {proc.stderr.strip().splitlines()[-1:]}"
        )
    tmp.replace(out)
    return out


def _hf_folder_for_llama_cpp(path: Path, workdir: Path) -> Path:
    from safetensors.torch import save_file

    from ..formats import fla, hf

    raw = read_checkpoint(path)
    folder = workdir / f"{path.stem}-for-llama.cpp"
    if (folder / "config.json").exists():
        return folder
    sd = {k: v.float() for k, v in raw.state_dict.items()}
    emb = sd["emb.weight"]
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    common = {"vocab_size": emb.shape[0], "hidden_size": emb.shape[1], "num_hidden_layers": n_layer,
              "intermediate_size": sd["blocks.0.ffn.key.weight"].shape[0]}  # fmt: skip
    if raw.version == "7":
        tensors = fla.blinkdl_to_fla(sd)
        config = {"model_type": "rwkv7", "architectures": ["RWKV7ForCausalLM"], **common, "norm_eps": 1e-5,
                  "head_dim": sd["blocks.0.att.r_k"].shape[-1],
                  "decay_low_rank_dim": sd["blocks.0.att.w1"].shape[1], "a_low_rank_dim": sd["blocks.0.att.a1"].shape[1],
                  "v_low_rank_dim": sd["blocks.1.att.v1"].shape[1], "gate_low_rank_dim": sd["blocks.0.att.g1"].shape[1]}  # fmt: skip
    elif raw.version == "6":
        tensors = hf.blinkdl_to_hf(sd)
        config = {"model_type": "rwkv6", "architectures": ["Rwkv6ForCausalLM"], **common, "layer_norm_epsilon": 1e-5,
                  "head_size": sd["blocks.0.att.time_faaaa"].shape[-1], "rescale_every": 0}  # fmt: skip
    else:
        raise RwkvkitError(f"the llama.cpp peer runs RWKV-6 and RWKV-7; {path} is RWKV-{raw.version}")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(VOCAB, tmp / VOCAB.name)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder


# llama.cpp's block matrices (RWKV-6/7 GGUF names): what its CPU_REPACK buffer type may take.
_REPACKED = (
    rb"^blk\.\d+\.(time_mix_(key|value|receptance|output|gate)|channel_mix_(key|value|receptance))\.weight$"
)


class _BufferOverride(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


@contextlib.contextmanager
def _llama_cpp_buffer_types(llama_cpp: Any, outtype: str) -> Any:
    """Where llama.cpp keeps the quantized weights. By default its extra CPU buffer types take them:
    AMX (preferred here) and CPU_REPACK (interleaved for its AVX-512 kernels). With llama-cpp-python
    0.3.36 built with GGML_NATIVE on this project's Xeon, decoding a q8_0 or q4_0 RWKV-7 file
    segfaults in the AMX buffer's kernels, and a q8_0 (or the q6_K head) one in CPU_REPACK's too;
    so quantized files load with the extra buffer types off, except that q4_0's block matrices are
    put in CPU_REPACK explicitly (it runs, and is faster than without). f32/f16 are untouched."""
    if outtype not in ("q8_0", "q4_0"):
        yield
        return
    import llama_cpp.llama as llama_module  # type: ignore[import-not-found]

    default = llama_cpp.llama_model_default_params
    overrides = None
    if outtype == "q4_0":
        repack = _cpu_repack_buffer_type(llama_cpp)
        if repack is not None:
            overrides = (_BufferOverride * 2)(_BufferOverride(_REPACKED, repack), _BufferOverride(None, None))

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        if overrides is not None:
            p.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p).value
        return p

    llama_module.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        llama_module.llama_cpp.llama_model_default_params = default


def _cpu_repack_buffer_type(llama_cpp: Any) -> int | None:
    """ggml's CPU_REPACK buffer type (a pointer), looked up through ggml's backend registry."""
    from llama_cpp import _ggml  # type: ignore[import-not-found]

    vp = ctypes.c_void_p
    ggml, base = _ggml.libggml, ctypes.CDLL(str(Path(_ggml.libggml_base_path) / "libggml-base.so"))
    ggml.ggml_backend_dev_by_type.restype, ggml.ggml_backend_dev_by_type.argtypes = vp, [ctypes.c_int]
    ggml.ggml_backend_dev_backend_reg.restype, ggml.ggml_backend_dev_backend_reg.argtypes = vp, [vp]
    ggml.ggml_backend_reg_get_proc_address.restype = vp
    ggml.ggml_backend_reg_get_proc_address.argtypes = [vp, ctypes.c_char_p]
    base.ggml_backend_buft_name.restype, base.ggml_backend_buft_name.argtypes = ctypes.c_char_p, [vp]
    device = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    fn = ggml.ggml_backend_reg_get_proc_address(
        ggml.ggml_backend_dev_backend_reg(device), b"ggml_backend_dev_get_extra_bufts"
    )
    if not fn:
        return None
    types = ctypes.CFUNCTYPE(ctypes.POINTER(vp), vp)(fn)(device)
    i = 0
    while types[i]:
        if base.ggml_backend_buft_name(types[i]) == b"CPU_REPACK":
            return types[i]
        i += 1
    return None


def llamacpp_contender(
    path: Path, workdir: Path, outtype: str, threads: int, converter_dir: Path | None = None
) -> Contender:
    """llama.cpp through ``llama-cpp-python`` on a GGUF of the same weights (:func:`gguf_file`).

    Decode: one ``llama_decode`` of one token, then the greedy token from the last logits, as ours
    does; the context is cleared before it fills (an RWKV's state does not grow). Prefill: a prompt
    from an empty state, the last logits only (``logits_all`` off, like ours with ``last_only``).
    """
    import llama_cpp  # type: ignore[import-not-found]
    import numpy as np

    gguf = gguf_file(path, workdir, outtype, converter_dir, threads)
    n_ctx = 4096
    with _llama_cpp_buffer_types(llama_cpp, outtype):
        llm = llama_cpp.Llama(
            str(gguf), n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads, logits_all=False,
            verbose=False,
        )  # fmt: skip
    n_vocab = llm.n_vocab()

    def last_logits() -> Any:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))

    def make_step(batch: int) -> Callable[[], None]:
        llm.reset()
        box = [0]

        def step() -> None:
            if llm.n_tokens >= n_ctx - 1:
                llm.reset()
            llm.eval([box[0]])
            box[0] = int(last_logits().argmax())

        return step

    def prefill(tokens: list[int]) -> None:
        llm.reset()
        llm.eval(tokens)
        last_logits()

    # close: free the model while the library is still loaded (its __del__ fails at interpreter exit)
    return Contender(f"llama.cpp {outtype}", make_step, prefill, close=llm.close)
