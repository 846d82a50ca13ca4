"""Random RWKV-6 and RWKV-7 checkpoints with the World vocabulary, in the shapes llama.cpp's converter
accepts, and llama.cpp's own GGUF conversions of them (conftest.py serves both per session).

llama.cpp's converter writes the World tokenizer (65536 rows), so the embedding is that wide; the rest
is small. RWKV-6's low-rank widths are the ones the converter assumes below 4096 wide (32 and 64: it
writes them into the metadata without reading the tensors). A "rescaled" RWKV-6 conversion is made from
a folder whose config says ``rescale_every: 2`` (RWKV/ folders say 6), so its GGUF holds layer 2's
output matrices halved, as real Finch GGUF files do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

import rwkvkit
from rwkvkit.convert import convert
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.testing import random_rwkv6_state_dict, random_rwkv7_state_dict

CONFIGS = {
    "6": RWKV6Config(vocab_size=65536, n_layer=3, n_embd=128, ffn_dim=256, head_size=64, mix_lora=32, decay_lora=64),
    "7": RWKV7Config(vocab_size=65536, n_layer=2, n_embd=128, ffn_dim=256, head_size=64, decay_lora=32,
                     iclr_lora=32, value_lora=32, gate_lora=64),
}  # fmt: skip
MAKERS = {"6": random_rwkv6_state_dict, "7": random_rwkv7_state_dict}
TOKENS = [int(t) for t in torch.randint(1, 65530, (16,), generator=torch.Generator().manual_seed(7))]
RESCALE_EVERY = 2  # what the RWKV-6 folder's config.json tells llama.cpp's converter
CONVERTER_TYPES = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "q8_0": "q8_0"}  # ours -> its --outtype


def save_world_models(folder: Path) -> dict[str, Path]:
    out = {}
    for version, config in CONFIGS.items():
        out[version] = folder / f"rwkv{version}.pth"
        torch.save(MAKERS[version](config, seed=11), out[version])
    return out


def logits(path: Path | str, tokens: list[int] = TOKENS) -> torch.Tensor:
    """rwkvkit's logits (T, V) for ``tokens`` from the checkpoint at ``path``."""
    with torch.no_grad():
        return rwkvkit.load_model(path)(tokens)[0][0]


def hf_folder_for_converter(pth: Path, folder: Path, rescale_every: int = 0) -> Path:
    """``rwkvkit convert --to hf``; with ``rescale_every`` > 0 its config.json says so, as RWKV/ folders
    say 6, and llama.cpp's converter then divides the output matrices (see the module docstring)."""
    convert(pth, folder, "hf")
    if rescale_every:
        cfg = json.loads((folder / "config.json").read_text())
        cfg["rescale_every"] = rescale_every
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def converter_cache(
    folder: Path, models: dict[str, Path], run: Callable[[Path, Path, str], Path]
) -> Callable:
    """get(version, dtype, rescaled=False) -> llama.cpp's GGUF conversion of that model, made once per
    session; ``rescaled`` (RWKV-6): from a folder whose config says rescale_every = RESCALE_EVERY."""
    made: dict[tuple[str, str, bool], Path] = {}

    def get(version: str, dtype: str, rescaled: bool = False) -> Path:
        key = (version, dtype, rescaled)
        if key not in made:
            tag = f"{version}{'-rescaled' if rescaled else ''}"
            hf = folder / f"hf{tag}"
            if not hf.exists():
                hf_folder_for_converter(models[version], hf, RESCALE_EVERY if rescaled else 0)
            made[key] = run(hf, folder / f"llama-rwkv{tag}-{dtype}.gguf", CONVERTER_TYPES[dtype])
        return made[key]

    return get
