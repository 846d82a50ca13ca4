"""The weight dtypes by the names users write (``--dtype``, ``model_args dtype=``, ``convert(dtype=)``)."""

from __future__ import annotations

import torch

from .errors import RwkvkitError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_from_name(name: str) -> torch.dtype:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` -> the torch dtype; anything else is an error naming the choices."""
    if name not in DTYPES:
        raise RwkvkitError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]
