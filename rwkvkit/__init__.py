"""rwkvkit: run, train, evaluate and serve RWKV language models.

Public API (stable names): :func:`load_model`, :func:`load_tokenizer`, :func:`generate`.
Importing the package has no side effects.
"""

from __future__ import annotations

from typing import Any

from .checkpoint import load_model
from .engine import Prefix
from .errors import CheckpointError, RwkvkitError, StateError, TokenizerError, UnsupportedVersionError
from .generate import (
    Generation,
    GenerationResult,
    generate,
    generate_batch,
    generate_text,
    prefill_text,
)
from .sampling import SamplingParams
from .statefile import load_state, save_state

__version__ = "0.1.0"


def load_tokenizer(name_or_path: str) -> Any:
    """A tokenizer by name ("world", "20b", "byte") or from a vocabulary file."""
    from .tokenizer import load_tokenizer as _load

    return _load(name_or_path)


__all__ = [
    "CheckpointError",
    "Generation",
    "GenerationResult",
    "Prefix",
    "RwkvkitError",
    "SamplingParams",
    "StateError",
    "TokenizerError",
    "UnsupportedVersionError",
    "__version__",
    "generate",
    "generate_batch",
    "generate_text",
    "load_model",
    "load_state",
    "load_tokenizer",
    "prefill_text",
    "save_state",
]
