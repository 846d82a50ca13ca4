"""The contenders ``rwkvkit bench`` measures: ours (through the public API), and, by name, the
peers of :mod:`.peers`; the random checkpoints of named shapes they all read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import build_model, load_model, read_checkpoint
from ..compiled import compile_step
from ..dtypes import DTYPES
from ..errors import RwkvkitError
from ..fileio import atomic_write
from ..models.rwkv4 import RWKV4Config
from ..models.rwkv5 import RWKV5Config
from ..models.rwkv6 import RWKV6Config
from ..models.rwkv7 import RWKV7Config
from ..testing import (
    random_rwkv4_state_dict,
    random_rwkv5_state_dict,
    random_rwkv6_state_dict,
    random_rwkv7_state_dict,
)
from .peers import (
    PEERS,
    hf_contender,
    llamacpp_contender,
    official_contender,
    rwkvcpp_contender,
)
from .timing import Contender

# name -> (config, random state dict): the released models' shapes (Pile for RWKV-4, World for 5-7).
SHAPES: dict[str, tuple[Any, Callable[..., dict[str, torch.Tensor]]]] = {
    "169m": (RWKV4Config(vocab_size=50277, n_layer=12, n_embd=768, ffn_dim=3072), random_rwkv4_state_dict),
    "430m": (RWKV4Config(vocab_size=50277, n_layer=24, n_embd=1024, ffn_dim=4096), random_rwkv4_state_dict),
    "tiny": (RWKV4Config(vocab_size=1000, n_layer=2, n_embd=64, ffn_dim=256), random_rwkv4_state_dict),
    "v5-0.1b": (RWKV5Config(vocab_size=65536, n_layer=12, n_embd=768, ffn_dim=2688), random_rwkv5_state_dict),
    "v6-0.1b": (RWKV6Config(vocab_size=65536, n_layer=12, n_embd=768, ffn_dim=2688), random_rwkv6_state_dict),
    "v7-0.1b": (RWKV7Config(vocab_size=65536, n_layer=12, n_embd=768, ffn_dim=3072), random_rwkv7_state_dict),
    "v7-0.4b": (RWKV7Config(vocab_size=65536, n_layer=24, n_embd=1024, ffn_dim=4096), random_rwkv7_state_dict),
    "v7-tiny": (RWKV7Config(vocab_size=1000, n_layer=2, n_embd=64, ffn_dim=256, decay_lora=16, iclr_lora=16,
                            value_lora=16, gate_lora=16), random_rwkv7_state_dict),
}  # fmt: skip
OURS = ("fp32", "bf16", "fp16", "int8", "int4")


def random_checkpoint(shape: str, folder: Path, seed: int = 0) -> Path:
    """A random BlinkDL .pth of a named shape (cached in ``folder``)."""
    if shape not in SHAPES:
        raise RwkvkitError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    config, make = SHAPES[shape]
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "rwkv4" if config.version == "4" else "rwkv"  # the RWKV-4 files keep their old names
    path = folder / f"{prefix}-random-{shape}-seed{seed}.pth"
    if not path.exists():
        sd = make(config, seed)
        atomic_write(path, lambda p: torch.save(sd, p))
    return path


def rwkvkit_contender(path: Path, variant: str, *, plain: bool = False, compiled: bool = False) -> Contender:
    """Ours through the public API: ``load_model(path, dtype=..., quantize=...)``, and with
    ``compiled`` its step compiled (``compile_step``; the first, compiling call happens in the
    warm-up round). Quantized variants keep their other weights (embedding, norms, mixing
    vectors) in float32."""
    quantize = variant if variant in ("int8", "int4") else None
    dtype = torch.float32 if quantize else DTYPES[variant]
    if plain:  # the reference modules, no fast layers: what the speed-ups are measured against
        model = build_model(read_checkpoint(path), dtype=dtype)
    else:
        model = load_model(path, dtype=dtype, quantize=quantize)
    if compiled:
        compile_step(model)

    def make_step(batch: int) -> Callable[[], None]:
        box: list[Any] = [None, torch.zeros(batch, 1, dtype=torch.long)]

        def step() -> None:
            with torch.inference_mode():
                logits, box[0] = model(box[1], box[0])
            box[1] = logits[:, -1].argmax(-1, keepdim=True)

        return step

    def prefill(tokens: list[int]) -> None:
        with torch.inference_mode():  # like the official package: the state and the last logits
            model(torch.tensor([tokens]), last_only=True)

    name = f"rwkvkit {variant}" + (" (plain modules)" if plain else "") + (" compiled" if compiled else "")
    return Contender(name, make_step, prefill, batches=(1, 8))


def check_names(names: list[str]) -> None:
    """Refuse unknown contender names before anything is built (a random checkpoint takes a while)."""
    unknown = [
        n
        for n in names
        if not (
            n in OURS
            or n in PEERS
            or (n.startswith("plain-") and n[6:] in OURS)
            or (n.endswith("-compiled") and n[: -len("-compiled")] in OURS)
        )
    ]
    if unknown or not names:
        raise RwkvkitError(
            f"unknown contender {unknown[0]!r}; choose from {', '.join(OURS + PEERS)}"
            if unknown
            else "--contenders names none"
        )


def build_contenders(
    path: Path, names: list[str], workdir: Path, threads: int, llama_cpp: Path | None = None
) -> tuple[list[Contender], list[str]]:
    """The named contenders that can run here, and a note for each that cannot."""
    made, notes = [], []
    for name in names:
        try:
            if name in OURS:
                made.append(rwkvkit_contender(path, name))
            elif name.endswith("-compiled") and name[: -len("-compiled")] in OURS:
                made.append(rwkvkit_contender(path, name[: -len("-compiled")], compiled=True))
            elif name.startswith("plain-") and name[6:] in OURS:
                made.append(rwkvkit_contender(path, name[6:], plain=True))
            elif name == "rwkv-fp32":
                made.append(official_contender(path, "cpu fp32"))
            elif name == "rwkv-bf16":
                made.append(official_contender(path, "cpu bf16"))
            elif name == "hf-fp32":
                made.append(hf_contender(path, workdir))
            elif name in ("rwkvcpp-fp32", "rwkvcpp-fp16"):
                made.append(rwkvcpp_contender(path, workdir, "float" + name[-2:], threads))
            elif name.startswith("llamacpp-") and name in PEERS:
                made.append(llamacpp_contender(path, workdir, name.split("-", 1)[1], threads, llama_cpp))
            else:
                raise RwkvkitError(f"unknown contender {name!r}; choose from {', '.join(OURS + PEERS)}")
        except ImportError as e:
            notes.append(f"{name}: skipped, not installed ({e.name}); run benchmarks/setup.sh")
    return made, notes
