"""Chat and prompt/completion examples: which tokens the loss counts, how prepare stores them, how
training reads them, and the bad inputs they are refused for (by file and line)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkvkit.chat import ChatTemplate
from rwkvkit.errors import RwkvkitError
from rwkvkit.tokenizer import ByteTokenizer
from rwkvkit.train.data import DataError, TokenData, prepare
from rwkvkit.train.examples import DocumentSampler, encode_example, read_example

CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Farewell."},
    ]
}


def counted(ids: list[int], mask: list[int]) -> str:
    """The text of the counted tokens, with a | where a counted run ends (byte tokens)."""
    out = []
    for i, (t, m) in enumerate(zip(ids, mask, strict=True)):
        if m:
            out.append(chr(t))
            if i + 1 == len(mask) or not mask[i + 1]:
                out.append("|")
    return "".join(out)


def test_chat_mask_counts_the_replies_and_their_blank_lines_only() -> None:
    ex = read_example(CHAT, "x.jsonl:1", ChatTemplate())
    ids, mask = encode_example(ByteTokenizer(), ex)
    text = bytes(ids).decode()
    assert text == (
        "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Bye\n\nAssistant: Farewell.\n\n"
    )
    # Exactly the assistant's words, the space after "Assistant:" and the blank line that ends them.
    assert counted(ids, mask) == " Hello!\n\n| Farewell.\n\n|"
    # Position by position, for the first reply: "Assistant:" is prompt, " Hello!\n\n" is trained.
    start = text.index("Assistant: Hello")
    assert mask[start : start + len("Assistant:")] == [0] * len("Assistant:")
    assert mask[start + len("Assistant:") : start + len("Assistant: Hello!\n\n")] == [1] * 9
    # cut where `rwkvkit chat` cuts: a user turn goes with the opening of the reply
    assert [p for p, _ in ex.pieces][:3] == ["System: Be brief.\n\n", "User: Hi\n\nAssistant:", " Hello!\n\n"]


def test_completion_mask_counts_the_completion_and_end_of_text() -> None:
    ex = read_example({"prompt": "2+2=", "completion": " 4"}, "x:1", ChatTemplate())
    ids, mask = encode_example(ByteTokenizer(), ex)
    assert ids == [*b"2+2= 4", 0]  # 0: the byte tokenizer's end of text
    assert mask == [0, 0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"messages": [{"content": "hi"}]}, 'message 0 needs a "role" and a "content"'),
        ({"messages": [{"role": "user"}]}, 'message 0 needs a "role" and a "content"'),
        ({"messages": [{"role": "bot", "content": "x"}]}, "role 'bot'"),
        ({"messages": [{"role": "user", "content": 3}]}, "not a string"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
        ({"messages": []}, "non-empty list"),
        ({"prompt": "a"}, '"completion"'),
        ({"prompt": "a", "completion": ""}, "empty"),
        ({"txt": "a"}, '"text" field, a "messages" list'),
    ],
)
def test_bad_examples_are_refused_by_file_and_line(tmp_path: Path, line: dict, problem: str) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(CHAT) + "\n\n" + json.dumps(line) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:3: .*" + re.escape(problem)):
        prepare([str(f)], tmp_path / "out", progress=False)


def test_plain_text_and_examples_do_not_mix(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps(CHAT) + "\n" + json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataError, match=r"a\.jsonl:2: mixes plain text"):
        prepare([str(tmp_path / "a.jsonl")], tmp_path / "out", progress=False)


def write_examples(path: Path, n: int) -> Path:
    lines = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a" * (i % 7)}]}
        if i % 2
        else {"prompt": f"p{i}", "completion": " c" * (1 + i % 3)}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_prepare_stores_masks_and_example_starts_and_the_sampler_reads_them(tmp_path: Path) -> None:
    src = write_examples(tmp_path / "ex.jsonl", 20)
    m = prepare([str(src)], tmp_path / "out", val_fraction=0.2, progress=False)
    assert m["examples"] and (m["train_examples"], m["val_examples"]) == (16, 4)
    data = TokenData.open(tmp_path / "out")
    tok, template = ByteTokenizer(), ChatTemplate()
    expected = [
        encode_example(tok, read_example(json.loads(x), "", template)) for x in src.read_text().splitlines()
    ]
    for split, rows, first_line in (("train", expected[:16], 1), ("val", expected[16:], 17)):
        tokens, mask, docs = getattr(data, split), data.masks[split], data.docs[split]
        assert np.asarray(tokens).tolist() == [t for ids, _ in rows for t in ids]
        assert np.asarray(mask).tolist() == [b for _, ms in rows for b in ms]
        assert docs[:, 0].tolist() == np.cumsum([0] + [len(ids) for ids, _ in rows[:-1]]).tolist()
        assert docs[:, 2].tolist() == list(range(first_line, first_line + len(rows)))
    sampler = data.sampler("train", ctx_len=64, seed=0)
    x, y, w = sampler.read(np.array([3, 0]))
    assert x.shape == y.shape == w.shape and x.shape[1] == max(len(expected[3][0]), len(expected[0][0])) - 1
    for row, i in enumerate((3, 0)):
        ids, ms = expected[i]
        n = len(ids) - 1
        assert x[row, :n].tolist() == ids[:-1] and y[row, :n].tolist() == ids[1:]
        assert w[row, :n].tolist() == ms[1:] and not w[row, n:].any()  # padding never counts
    assert torch.equal(
        torch.as_tensor(sampler.global_batch(5, 4)), torch.as_tensor(sampler.global_batch(5, 4))
    )


def test_an_example_longer_than_the_window_is_named(tmp_path: Path) -> None:
    src = tmp_path / "long.jsonl"
    src.write_text(
        json.dumps({"prompt": "p", "completion": " short"})
        + "\n"
        + json.dumps({"prompt": "p", "completion": " " + "x" * 100})
        + "\n"
        + json.dumps({"prompt": "p", "completion": " v"})
        + "\n"
    )
    prepare([str(src)], tmp_path / "out", val_fraction=0.3, progress=False)
    data = TokenData.open(tmp_path / "out")
    with pytest.raises(
        RwkvkitError, match=r"long\.jsonl:2: this example is 103 tokens, more than --ctx-len \+ 1 = 33"
    ):
        data.sampler("train", ctx_len=32, seed=0)
    assert isinstance(data.sampler("train", ctx_len=200, seed=0), DocumentSampler)
