"""Examples with a loss mask: chat conversations and prompt/completion pairs.

A JSONL line is one example, either ``{"messages": [{"role": ..., "content": ...}, ...]}`` (roles
system, user, assistant) or ``{"prompt": ..., "completion": ...}``. Each becomes tokens and a mask
saying which tokens the loss counts: only what the model should learn to say.

A conversation is written in the RWKV World chat format (:class:`rwkvkit.chat.ChatTemplate`) and
cut into the same pieces ``rwkvkit chat`` feeds: a user turn together with the opening of the
assistant's turn (``User: ...\\n\\nAssistant:``) is prompt; the assistant's words and the blank line
that ends them (`` ...\\n\\n``) are trained. Each piece is tokenized alone, as chat tokenizes them,
so a tuned model sees exactly the tokens it will see when chatting. A prompt/completion pair is
the prompt (not trained) followed by the completion and the end-of-text token (trained: the model
learns to stop).

Training reads each example whole, from its start (:class:`DocumentSampler`), one per row: a
learned initial state (state tuning) is learned as the state every conversation starts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..chat import ChatTemplate
from ..errors import RwkvkitError

ROLES = ("system", "user", "assistant")
Pieces = list[tuple[str, bool]]  # (text, whether the loss counts its tokens)


class Example(NamedTuple):
    pieces: Pieces
    end_of_text: bool  # append the end-of-text token, counted (a completion ends there)


def chat_pieces(messages: Any, where: str, template: ChatTemplate) -> Pieces:
    """A ``messages`` list as prompt and reply pieces; ``where`` (file:line) names it in errors."""
    if not isinstance(messages, list) or not messages:
        raise RwkvkitError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
    pieces: Pieces = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RwkvkitError(f'{where}: message {i} needs a "role" and a "content"')
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise RwkvkitError(f"{where}: message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise RwkvkitError(f'{where}: message {i} has a "content" that is not a string')
        turn = template.turn(role, content)
        if role == "assistant":
            opening = template.reply_prompt()
            if pieces and not pieces[-1][1] and messages[i - 1]["role"] == "user":
                pieces[-1] = (pieces[-1][0] + opening, False)  # chat sends the user turn and this together
            else:
                pieces.append((opening, False))
            pieces.append((turn[len(opening) :], True))
        else:
            pieces.append((turn, False))
    if not any(trained for _, trained in pieces):
        raise RwkvkitError(f"{where}: no assistant message, so nothing to learn from this conversation")
    return pieces


def completion_pieces(obj: dict[str, Any], where: str) -> Pieces:
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise RwkvkitError(f'{where}: a prompt/completion line needs string "prompt" and "completion" fields')
    if not completion:
        raise RwkvkitError(f'{where}: the "completion" is empty, so there is nothing to learn')
    return [(prompt, False), (completion, True)]


def read_example(obj: dict[str, Any], where: str, template: ChatTemplate) -> Example | None:
    """A chat or prompt/completion line as an example; None for a plain ``{"text": ...}`` line."""
    if "messages" in obj:
        return Example(chat_pieces(obj["messages"], where, template), end_of_text=False)
    if "prompt" in obj or "completion" in obj:
        return Example(completion_pieces(obj, where), end_of_text=True)
    if isinstance(obj.get("text"), str):
        return None
    raise RwkvkitError(
        f'{where}: each JSONL line needs a string "text" field, a "messages" list (chat) or '
        '"prompt" and "completion" strings'
    )


def encode_example(tokenizer: Any, example: Example) -> tuple[list[int], list[int]]:
    """Token ids and their loss mask (1: counted), each piece tokenized alone."""
    ids: list[int] = []
    mask: list[int] = []
    for text, trained in example.pieces:
        piece = tokenizer.encode(text)
        ids += piece
        mask += [int(trained)] * len(piece)
    eos = getattr(tokenizer, "eos_id", None)
    if example.end_of_text and eos is not None:
        ids.append(eos)
        mask.append(1)
    return ids, mask


class DocumentSampler:
    """Whole examples, one per row from its start, padded (mask 0) to the longest in the batch.

    The examples of a step depend only on (seed, step), as :class:`~.data.TokenSampler`'s windows
    do, so resuming needs only the step. ``docs`` is (n, 3): each example's start offset, source
    file index and line; an example longer than ``ctx_len + 1`` tokens is refused, by file and line.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        mask: np.ndarray,
        docs: np.ndarray,
        ctx_len: int,
        seed: int,
        sources: Sequence[str],
    ) -> None:
        starts = docs[:, 0].astype(np.int64)
        self.ends = np.append(starts[1:], len(tokens))
        lengths = self.ends - starts
        over = np.nonzero(lengths > ctx_len + 1)[0]
        if over.size:
            i = int(over[0])
            raise RwkvkitError(
                f"{sources[int(docs[i, 1])]}:{int(docs[i, 2])}: this example is {int(lengths[i])} tokens, more "
                f"than --ctx-len + 1 = {ctx_len + 1} ({over.size} such); raise --ctx-len (--bptt-len keeps "
                "the memory bounded) or shorten it"
            )
        self.tokens, self.mask, self.starts, self.seed = tokens, mask, starts, seed

    def __len__(self) -> int:
        return len(self.starts)

    def global_batch(self, step: int, size: int) -> np.ndarray:
        """The example indices of the whole (all ranks, all micro-batches) batch of a step."""
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.starts), size=size)

    def read(self, picks: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """Inputs, targets and the targets' loss mask, (B, T) each; T + 1 is the longest example."""
        spans = [(int(self.starts[i]), int(self.ends[i])) for i in picks]
        width = max(e - s for s, e in spans)
        ids = np.zeros((len(spans), width), dtype=np.int64)
        counted = np.zeros((len(spans), width), dtype=np.float32)
        for row, (s, e) in enumerate(spans):
            ids[row, : e - s] = self.tokens[s:e]
            counted[row, : e - s] = self.mask[s:e]
        t, m = torch.from_numpy(ids), torch.from_numpy(counted)
        return t[:, :-1], t[:, 1:], m[:, 1:]
