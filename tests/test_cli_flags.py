"""The helpers the text commands share: picking a tokenizer for a model, flag escapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file

import rwkvkit
from rwkvkit.errors import TokenizerError
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.cli.flags import tokenizer_name_for_model, unescape
from rwkvkit.testing import random_rwkv4_state_dict


def test_unescape() -> None:
    assert unescape(r"a\n\nb\tc\\n") == "a\n\nb\tc\\n"
    assert unescape("plain, ü") == "plain, ü"
    assert unescape("trailing\\") == "trailing\\"


def test_tokenizer_from_metadata_then_vocab_size(tmp_path: Path) -> None:
    sd = {k: v.contiguous() for k, v in random_rwkv4_state_dict(RWKV4Config(97, 1, 16, 32)).items()}
    tagged, bare = tmp_path / "tagged.safetensors", tmp_path / "bare.safetensors"
    save_file(sd, str(tagged), metadata={"format": "pt", "rwkvkit_tokenizer": "byte"})
    save_file(sd, str(bare), metadata={"format": "pt"})
    assert tokenizer_name_for_model(rwkvkit.load_model(tagged)) == "byte"
    with pytest.raises(TokenizerError, match="--tokenizer"):
        tokenizer_name_for_model(rwkvkit.load_model(bare))  # 97 tokens: no known vocabulary
    sd256 = {k: v.contiguous() for k, v in random_rwkv4_state_dict(RWKV4Config(256, 1, 16, 32)).items()}
    save_file(sd256, str(bare), metadata={"format": "pt", "rwkvkit_config": json.dumps({"version": "4"})})
    assert tokenizer_name_for_model(rwkvkit.load_model(bare)) == "byte"
