"""Reading evaluation files: what each reader returns, and a one-line error naming the file,
the line and the problem for each kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_models import TEXT, write_jsonl

from rwkvkit.eval import EvalDataError, read_lambada, read_multiple_choice, read_texts


def test_readers_and_errors(tmp_path: Path) -> None:
    txt = tmp_path / "play.txt"
    txt.write_text(TEXT, encoding="utf-8")
    assert read_texts(txt) == [TEXT]
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": "a b"}, {"text": "c d"}, {"text": "e f"}])
    assert read_texts(docs, limit=2) == ["a b", "c d"]
    (tmp_path / "bad.jsonl").write_text('{"text": "a b"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"bad.jsonl:2: not valid JSON"):
        read_lambada(tmp_path / "bad.jsonl")
    with pytest.raises(EvalDataError, match=r":1: missing the field 'text'"):
        read_lambada(write_jsonl(tmp_path / "x.jsonl", [{"txt": "a b"}]))
    with pytest.raises(EvalDataError, match="no last word"):
        read_lambada(write_jsonl(tmp_path / "y.jsonl", [{"text": "word"}]))
    with pytest.raises(EvalDataError, match="label 2 is not an index"):
        read_multiple_choice(
            write_jsonl(tmp_path / "z.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 2}])
        )
    with pytest.raises(EvalDataError, match="neither PIQA"):
        read_multiple_choice(write_jsonl(tmp_path / "w.jsonl", [{"question": "q"}]))
    with pytest.raises(EvalDataError, match="no such file"):
        read_texts(tmp_path / "missing.txt")
    with pytest.raises(EvalDataError, match="holds no examples"):
        read_lambada(write_jsonl(tmp_path / "empty.jsonl", []))
