"""A GPT (pre-LayerNorm transformer) baseline, called like the RWKV models.

It exists so that comparisons are like for like: ``rwkvkit train --arch gpt`` trains it through
the same loop and data, and ``logits, state = model(tokens, state)`` works as for RWKV, with the
state a key/value cache (None at the start). Attention is PyTorch's scaled_dot_product_attention.

Shapes: B batch, T new tokens, P cached tokens, C = n_embd, H heads, D = C // H head width.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import StateError
from ..state import RecurrentState
from .common import as_token_batch


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    n_layer: int
    n_embd: int
    n_head: int
    ffn_dim: int  # MLP width; set so the parameter count matches an RWKV of the same width/depth
    n_ctx: int  # learned positions: the longest sequence (prompt + cache) the model can see
    layer_norm_eps: float = 1e-5

    version: ClassVar[str] = "gpt"

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], **overrides: Any) -> GPTConfig:
        vocab_size, n_embd = sd["wte.weight"].shape
        n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        ffn_dim = sd["blocks.0.mlp.fc.weight"].shape[0]
        n_ctx = sd["wpe.weight"].shape[0]
        n_head = int(overrides.pop("n_head", max(1, n_embd // 64)))
        return cls(vocab_size, n_layer, n_embd, n_head, ffn_dim, n_ctx, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, **dataclasses.asdict(self)}


@dataclasses.dataclass
class GPTState(RecurrentState):
    """The key/value cache: (L, B, H, P, D) each; P grows by T with every call."""

    key: Tensor
    value: Tensor

    version: ClassVar[str] = "gpt"

    @property
    def length(self) -> int:
        return self.key.shape[3]


class Attention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        B, T, C = x.shape
        q, k, v = (
            self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        )  # (B, H, T, D)
        if past is not None:
            k = torch.cat([past[0].to(k.dtype), k], dim=2)  # (B, H, P + T, D)
            v = torch.cat([past[1].to(v.dtype), v], dim=2)
            P = k.shape[2] - T
            # query i (at position P + i) sees keys 0 .. P + i
            mask = (
                torch.arange(P + T, device=x.device)[None, :]
                <= (P + torch.arange(T, device=x.device))[:, None]
            )
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C)), k, v


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.ffn_dim)
        self.proj = nn.Linear(config.ffn_dim, config.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.ln2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)


class GPT(nn.Module):
    """``logits, state = model(tokens, state)``; the state is a :class:`GPTState` KV cache."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_ctx, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def initial_state(self, batch: int = 1) -> GPTState:
        c = self.config
        z = torch.zeros(c.n_layer, batch, c.n_head, 0, c.n_embd // c.n_head, device=self.wte.weight.device)
        return GPTState(z, z.clone())

    def forward(self, tokens: Tensor | list[int], state: GPTState | None = None) -> tuple[Tensor, GPTState]:
        tokens = as_token_batch(tokens, self.wte.weight.device)
        B, T = tokens.shape
        if state is not None and not isinstance(state, GPTState):
            raise StateError(f"expected a GPTState for this GPT model, got {type(state).__name__}")
        P = 0 if state is None else state.length
        if state is not None and state.batch_size != B:
            raise StateError(f"the cache holds batch {state.batch_size}, the tokens batch {B}")
        if self.config.n_ctx < P + T:
            raise StateError(
                f"{P} cached + {T} new tokens exceed this GPT's {self.config.n_ctx} positions; "
                "start from a shorter prompt or a fresh state"
            )
        pos = torch.arange(P, P + T, device=tokens.device)
        x = self.wte(tokens) + self.wpe(pos)  # (B, T, C)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            past = None if state is None or P == 0 else (state.key[i], state.value[i])
            a, k, v = block.attn(block.ln1(x), past)
            x = x + a
            x = x + block.mlp(block.ln2(x))
            keys.append(k.float())
            values.append(v.float())
        logits = self.head(self.ln_f(x)).float()
        return logits, GPTState(torch.stack(keys), torch.stack(values))


def gpt_ffn_dim_matching(vocab_size: int, n_layer: int, n_embd: int, rwkv_ffn_dim: int, n_ctx: int) -> int:
    """The GPT MLP width whose total parameter count is closest to an RWKV-4 of the same shape."""
    C, V, L = n_embd, vocab_size, n_layer
    # RWKV-4 per layer: 4 C^2 (time mix) + C^2 + 2 C F (channel mix) + 2 LayerNorms + 5 mixes + 2 decays
    rwkv = 2 * V * C + L * (5 * C * C + 2 * C * rwkv_ffn_dim + 4 * C + 7 * C) + 4 * C + 2 * C
    # GPT fixed part: embeddings, positions, head, per layer attention (with biases) + 2 LayerNorms
    fixed = 2 * V * C + n_ctx * C + 2 * C + L * (4 * C * C + 4 * C + 4 * C + C)
    per_unit = L * (2 * C + 1)  # one more MLP unit: C in, C out, one bias
    return max(1, round((rwkv - fixed) / per_unit))


def init_gpt_(model: GPT) -> None:
    """GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 L), zero biases."""
    std = 0.02
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            nn.init.zeros_(p)
        elif ".ln" in name or name.startswith("ln_f"):
            nn.init.ones_(p)
        elif name.endswith("proj.weight"):
            nn.init.normal_(p, 0.0, std / math.sqrt(2 * model.config.n_layer))
        else:
            nn.init.normal_(p, 0.0, std)
