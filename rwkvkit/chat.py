"""Multi-turn chat that never re-reads its history: the RNN state *is* the conversation.

Each turn feeds only the new text, ``User: <message>\\n\\nAssistant:``, to the state left by the
previous turn and generates until a blank line (the RWKV World chat format, :class:`ChatTemplate`);
the reply's tokens, blank line included, are already in the state when the turn ends. So turn n
costs the tokens of turn n, whatever came before. The state can be saved to a file and loaded back
(``/save``, ``/load``), which resumes the conversation exactly.

Python::

    chat = Chat(model, tokenizer, system="You are terse.", temperature=0)
    for piece in chat.send("Hello"):
        print(piece, end="")
    chat.save("hello.state")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .engine import Prefix
from .errors import RwkvkitError
from .generate import GenerationResult, generate, prefill_text
from .sampling import SamplingParams, make_generator
from .statefile import load_state, save_state

TURN_END = "\n\n"  # World models end a turn with a blank line


def clean_message(text: str) -> str:
    """One turn's text: a blank line would end the turn early, so blank lines are collapsed."""
    text = text.strip().replace("\r\n", "\n")
    while "\n\n" in text:
        text = text.replace("\n\n", "\n")
    return text


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """How a conversation is written as text; the defaults are the RWKV World format.

    A turn is ``<role>: <text><turn_end>``; the assistant's turn is opened with ``<assistant>:`` and
    the model writes the rest, ending it with ``turn_end`` (the stop string).
    """

    user: str = "User"
    assistant: str = "Assistant"
    system: str = "System"
    turn_end: str = TURN_END

    def turn(self, role: str, text: str) -> str:
        """One whole turn; ``role`` is "system", "user" or "assistant" (OpenAI's message roles)."""
        names = {"system": self.system, "user": self.user, "assistant": self.assistant}
        if role not in names:
            raise RwkvkitError(f"unknown chat role {role!r}; use one of {sorted(names)}")
        return f"{names[role]}: {clean_message(text)}{self.turn_end}"

    def reply_prompt(self) -> str:
        """What opens the assistant's turn; the model continues from here."""
        return f"{self.assistant}:"

    def render(self, messages: Sequence[Mapping[str, str]], *, add_reply_prompt: bool = True) -> str:
        """A conversation of ``{"role": ..., "content": ...}`` messages as one prompt, by default
        ending where the assistant speaks next (what a chat completions request sends)."""
        text = "".join(self.turn(m["role"], m["content"]) for m in messages)
        return text + self.reply_prompt() if add_reply_prompt else text

    def jinja(self) -> str:
        """This format as a Jinja chat template, for files other tools render prompts from (GGUF
        metadata, a Hugging Face tokenizer_config.json). It trims each message as :meth:`turn` does
        but cannot collapse blank lines inside one (Jinja has no loop for that)."""

        def literal(text: str) -> str:  # a single-quoted Jinja string literal
            return "'" + text.encode("unicode_escape").decode("ascii").replace("'", "\\'") + "'"

        end = literal(self.turn_end)
        turns = "".join(
            f"{'{%- if' if i == 0 else '{%- elif'} message['role'] == '{role}' -%}}"
            f"{{{{- {literal(name + ': ')} + message['content']|trim + {end} -}}}}"
            for i, (role, name) in enumerate(
                (("system", self.system), ("user", self.user), ("assistant", self.assistant))
            )
        )
        return (
            "{%- for message in messages -%}" + turns + "{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- " + literal(self.reply_prompt()) + " -}}{%- endif -%}"
        )


class Chat:
    """A conversation held as an RNN state; :meth:`send` streams the reply to one message."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        system: str | None = None,
        user: str = "User",
        assistant: str = "Assistant",
        template: ChatTemplate | None = None,
        max_tokens: int = 500,
        seed: int | None = None,
        **sampling: Any,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.template = template or ChatTemplate(user=user, assistant=assistant)
        self.user, self.assistant = self.template.user, self.template.assistant
        self.max_tokens = max_tokens
        self.sampling = sampling
        SamplingParams(**sampling)  # fail now, not at the first message
        device = next(model.parameters()).device
        self.generator = make_generator(seed, device)  # one stream for the whole conversation
        self.system_prefix = (
            prefill_text(model, tokenizer, self.template.turn("system", system)) if system else None
        )
        self.prefix: Prefix | None = self.system_prefix
        self.turns = 0
        self.last: GenerationResult | None = None

    def send(self, message: str) -> Iterator[str]:
        """Stream the reply to ``message``; the state moves past the reply and its blank line."""
        prompt = self.template.turn("user", message) + self.template.reply_prompt()
        gen = generate(
            self.model,
            self.tokenizer,
            prompt,
            max_tokens=self.max_tokens,
            stop=[self.template.turn_end],
            generator=self.generator,
            state=self.prefix,
            keep_state=True,
            **self.sampling,
        )
        first = True
        for piece in gen:
            if first:  # the model answers " Hello": the space belongs to the format, not the reply
                piece = piece.lstrip(" ")
                first = not piece
            if piece:
                yield piece
        result = gen.result
        assert result is not None
        before = self.prefix.tokens if self.prefix is not None else 0
        prefix = result.prefix(before)
        if result.stop_reason != "stop_string":  # cut short: close the turn so the format holds
            prefix = prefill_text(self.model, self.tokenizer, self.template.turn_end, prefix)
        self.prefix, self.last = prefix, result
        self.turns += 1

    def reply(self, message: str) -> str:
        """:meth:`send` without streaming."""
        return "".join(self.send(message))

    def reset(self) -> None:
        self.prefix, self.turns = self.system_prefix, 0

    def save(self, path: str | Path) -> Path:
        if self.prefix is None:
            raise RwkvkitError("nothing to save yet: the conversation is empty")
        return save_state(
            path,
            self.prefix.state,
            self.model,
            tokens_consumed=self.prefix.tokens,
            logits=self.prefix.logits,
            tokenizer=getattr(self.tokenizer, "name", None),
            extra={"kind": "chat", "turns": str(self.turns)},
        )

    def load(self, path: str | Path) -> None:
        saved = load_state(path, self.model)
        if saved.state.batch_size != 1:
            raise RwkvkitError(f"{path}: holds {saved.state.batch_size} states; a chat needs one")
        self.prefix = Prefix(saved.state, saved.logits, saved.tokens_consumed)
        self.turns = int(saved.extra.get("turns", "0"))
