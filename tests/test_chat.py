"""Chat (the library): the conversation is the state, each turn reads only its own text, the
template writes it, and a saved state resumes it exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from rwkvkit.chat import Chat, ChatTemplate, clean_message
from rwkvkit.errors import RwkvkitError
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.state import RecurrentState
from rwkvkit.testing import random_rwkv4
from rwkvkit.tokenizer import load_tokenizer


@dataclasses.dataclass
class HistoryState(RecurrentState):
    ids: Tensor  # (1, B, N) float64: every id read, in order

    version: ClassVar[str] = "history"


@dataclasses.dataclass(frozen=True)
class ByteConfig:
    vocab_size: int = 256


class ReplyModel(nn.Module):
    """A chat partner whose replies are known: after every ':' it types ``reply``, then spaces.
    Its state is the list of ids it has read, so what a chat fed it can be read back exactly."""

    def __init__(self, reply: bytes = b" ok then\n\n") -> None:
        super().__init__()
        self.config, self.reply = ByteConfig(), reply
        self.anchor = nn.Parameter(torch.zeros(1))

    def _next(self, history: list[int]) -> Tensor:
        since = history[::-1].index(ord(":")) if ord(":") in history else len(history)
        logits = torch.zeros(self.config.vocab_size)
        logits[self.reply[since] if since < len(self.reply) else ord(" ")] = 10.0
        return logits

    def forward(
        self, tokens: Tensor, state: HistoryState | None = None, *, last_only: bool = False
    ) -> tuple[Tensor, HistoryState]:
        B, T = tokens.shape
        read = torch.zeros(1, B, 0, dtype=torch.float64) if state is None else state.ids
        read = torch.cat([read, tokens[None].double()], dim=-1)
        logits = torch.stack(
            [
                torch.stack(
                    [self._next(read[0, b, : read.shape[-1] - T + t + 1].long().tolist()) for t in range(T)]
                )
                for b in range(B)
            ]
        )  # (B, T, V)
        return (logits[:, -1:] if last_only else logits), HistoryState(read)

    def step(self, tokens: Tensor, state: HistoryState) -> tuple[Tensor, HistoryState]:
        logits, state = self(tokens[:, None], state)
        return logits[:, -1], state


def read_back(chat: Chat) -> str:
    return bytes(chat.prefix.state.ids[0, 0].long().tolist()).decode()


@pytest.fixture(scope="module")
def byte_tok():
    return load_tokenizer("byte")


def test_the_state_is_the_conversation_written_by_the_template(byte_tok) -> None:
    chat = Chat(ReplyModel(), byte_tok, system="Be brief.\n\nVery.", temperature=0)
    assert chat.reply("Hello there") == "ok then"
    assert chat.reply("How are you?\n\n\nFine?") == "ok then"
    messages = [
        {"role": "system", "content": "Be brief.\n\nVery."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "ok then"},
        {"role": "user", "content": "How are you?\n\n\nFine?"},
        {"role": "assistant", "content": "ok then"},
    ]
    expected = chat.template.render(messages, add_reply_prompt=False)
    assert read_back(chat) == expected and "Very." in expected and "\n\n\n" not in expected
    assert chat.prefix.tokens == len(expected.encode()) and chat.turns == 2
    # turn 2 read only its own text: the user turn, the reply prompt, then the reply
    assert chat.last.prompt_tokens == len(b"User: How are you?\nFine?\n\nAssistant:")
    # a prompt for the next reply ends where the assistant speaks
    assert chat.template.render(messages).endswith("ok then\n\nAssistant:")


def test_a_turn_cut_short_is_closed_so_the_format_holds(byte_tok) -> None:
    chat = Chat(ReplyModel(), byte_tok, temperature=0, max_tokens=3)
    assert chat.reply("hi") == "ok" and chat.last.stop_reason == "max_tokens"
    assert read_back(chat) == "User: hi\n\nAssistant: ok\n\n"
    chat.reset()
    assert chat.prefix is None and chat.turns == 0


def test_a_custom_template(byte_tok) -> None:
    template = ChatTemplate(user="Q", assistant="A", system="Rules", turn_end="\n\n")
    chat = Chat(ReplyModel(), byte_tok, system="none", template=template, temperature=0)
    assert chat.reply("x") == "ok then"
    assert read_back(chat) == "Rules: none\n\nQ: x\n\nA: ok then\n\n"
    with pytest.raises(RwkvkitError, match="unknown chat role 'tool'"):
        template.render([{"role": "tool", "content": "x"}])
    assert clean_message("  a\r\n\r\n\n b \n") == "a\n b"


def test_saved_state_resumes_the_conversation(byte_tok, tmp_path: Path) -> None:
    model = random_rwkv4(RWKV4Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=64), seed=23)
    chat = Chat(model, byte_tok, system="Be brief.", temperature=0, max_tokens=20)
    chat.reply("Hello there")
    chat.save(tmp_path / "chat.state")
    second = chat.reply("How are you?")
    resumed = Chat(model, byte_tok, temperature=0, max_tokens=20)
    resumed.load(tmp_path / "chat.state")
    assert resumed.turns == 1 and resumed.reply("How are you?") == second
    with pytest.raises(RwkvkitError, match="nothing to save"):
        Chat(model, byte_tok).save(tmp_path / "empty.state")
    with pytest.raises(RwkvkitError, match="top_p"):
        Chat(model, byte_tok, top_p=3.0)
