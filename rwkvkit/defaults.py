"""Where the bundled default model lives (``rwkvkit generate`` without ``--model`` uses it)."""

from __future__ import annotations

from pathlib import Path

# A small byte-level model trained by rwkvkit's own training code, shipped as package data.
DEFAULT_MODEL = Path(__file__).parent / "data" / "default" / "model.safetensors"
DEFAULT_TOKENIZER = "byte"


def default_model_path() -> Path | None:
    """The bundled model's path, or None when this install has none."""
    return DEFAULT_MODEL if DEFAULT_MODEL.is_file() else None
