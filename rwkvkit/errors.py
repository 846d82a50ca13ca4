"""rwkvkit's own exception types: every user-facing failure is one of these, with a message
that names the file or value at fault and what to do about it."""

from __future__ import annotations

from pathlib import Path


class RwkvkitError(Exception):
    """Base class of every error rwkvkit raises on purpose."""


class CheckpointError(RwkvkitError):
    """A checkpoint file or folder cannot be read: wrong format, truncated, bad keys or values."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}")


class UnsupportedVersionError(CheckpointError):
    """The checkpoint is an RWKV version that this build of rwkvkit cannot run yet."""


class StateError(RwkvkitError):
    """A recurrent state does not fit the model it is used with."""


class TokenizerError(RwkvkitError):
    """A tokenizer cannot be found or loaded, or is given ids outside its vocabulary."""


class EvalDataError(RwkvkitError):
    """An evaluation file or request cannot be used as given."""


class FileAccessError(RwkvkitError):
    """A file or folder cannot be read or written: missing, a directory, not permitted, disk full."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(RwkvkitError, ValueError):
    """A configuration value (a flag, a config.json or metadata field) has the wrong type or range."""


class InputError(RwkvkitError, ValueError):
    """Something handed to a model or a generation call that it cannot take, e.g. token ids
    outside the vocabulary."""


class NonFiniteError(RwkvkitError):
    """NaN or infinity where numbers must be finite: logits, a loss, a gradient, a saved state."""
