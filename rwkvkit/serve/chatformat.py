"""How a conversation becomes token ids, so that each turn's ids extend the previous turn's.

A chat completions request sends the whole conversation every time. To find the state the last
turn left in the prefix cache, the ids of turn n + 1 must begin with exactly the ids the state
has read: the prompt of turn n and its reply. A tokenizer that merges across the seam ("...:" +
" reply") would break that, so each message is encoded on its own, and the assistant's opening
(``Assistant:``) apart from its text; the reply is then the ids of ``" " + text + turn_end``,
which :func:`reply_ids` gives and the scheduler caches the state after.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..chat import ChatTemplate, clean_message


def reply_ids(tokenizer: Any, template: ChatTemplate, content: str) -> list[int]:
    """What follows ``Assistant:`` when a reply is sent back in the next turn's messages."""
    return tokenizer.encode(" " + clean_message(content) + template.turn_end)


def encode_chat(tokenizer: Any, template: ChatTemplate, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The ids of ``template.render(messages)``, message by message (the text is the same)."""
    ids: list[int] = []
    opening = tokenizer.encode(template.reply_prompt())
    for m in messages:
        if m["role"] == "assistant":
            ids += opening + reply_ids(tokenizer, template, m["content"])
        else:
            ids += tokenizer.encode(template.turn(m["role"], m["content"]))
    return ids + opening
