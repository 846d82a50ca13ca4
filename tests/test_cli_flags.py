"""The helpers the verbs share: flag escapes, and the model a verb runs when --model is left out."""

from __future__ import annotations

import pytest

from rwkvkit.cli.flags import NoModelError, default_model, unescape
from rwkvkit.defaults import default_model_path


def test_unescape() -> None:
    assert unescape(r"a\n\nb\tc\\n") == "a\n\nb\tc\\n"
    assert unescape("plain, ü") == "plain, ü"
    assert unescape("trailing\\") == "trailing\\"


def test_default_model_is_the_bundled_one_or_a_clear_error() -> None:
    if default_model_path() is None:
        with pytest.raises(NoModelError, match="--model PATH"):
            default_model()
    else:
        assert default_model() == default_model_path()
