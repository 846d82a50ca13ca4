"""rwkvkit: run, train, evaluate and serve RWKV language models.

Public API (stable names): :func:`load_model`, :func:`load_tokenizer`, :func:`generate`.
Importing the package has no side effects and imports no torch: each public name is looked up
in its module the first time it is used (PEP 562), so the command line starts fast.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "load_model": "checkpoint",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "FileAccessError": "errors",
    "InputError": "errors",
    "NonFiniteError": "errors",
    "RwkvkitError": "errors",
    "StateError": "errors",
    "TokenizerError": "errors",
    "UnsupportedVersionError": "errors",
    "Generation": "generate",
    "GenerationResult": "generate",
    "Prefix": "engine",
    "generate": "generate",
    "generate_batch": "generate",
    "generate_text": "generate",
    "prefill_text": "generate",
    "SamplingParams": "sampling",
    "load_state": "statefile",
    "save_state": "statefile",
    "load_tokenizer": "tokenizer",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "FileAccessError",
    "Generation",
    "GenerationResult",
    "InputError",
    "NonFiniteError",
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

if TYPE_CHECKING:
    from .checkpoint import load_model
    from .engine import Prefix
    from .errors import (
        CheckpointError,
        ConfigError,
        FileAccessError,
        InputError,
        NonFiniteError,
        RwkvkitError,
        StateError,
        TokenizerError,
        UnsupportedVersionError,
    )
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
    from .tokenizer import load_tokenizer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """Keeps ``rwkvkit.generate`` the function: importing the submodule ``rwkvkit.generate``
    would otherwise set the package attribute of that name to the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return  # the submodule stays reachable as sys.modules["rwkvkit.generate"]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
