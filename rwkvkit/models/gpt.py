"""A GPT (pre-LayerNorm transformer) baseline, called like the RWKV models.

It exists so that comparisons are like for like: ``rwkvkit train --arch gpt`` trains it through
the same loop and data, and ``logits, state = model(tokens, state)`` and ``model.step(tokens,
state)`` work as for RWKV, with the state a key/value cache (None or ``initial_state`` at the start). Attention is PyTorch's scaled_dot_product_attention.

Shapes: B batch, T new tokens, P cached tokens, C = n_embd, H heads, D = C // H head width.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, StateError
from ..state import RecurrentState
from .common import as_token_batch, as_token_column, check_config, count_layers, run_blocks


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

    def __post_init__(self) -> None:
        check_config(self)
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], **overrides: Any) -> GPTConfig:
        vocab_size, n_embd = sd["wte.weight"].shape
        n_layer = count_layers(sd)
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
    """Causal multi-head self-attention over the cached keys/values and the new tokens."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)

    def _extend(self, state: GPTState, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, GPTState]:
        """The cache with the new keys/values (B, H, T, D) appended: (B, H, P + T, D) each."""
        if state.key.shape[2]:
            k = torch.cat([state.key.to(k.dtype), k], dim=2)
            v = torch.cat([state.value.to(v.dtype), v], dim=2)
        return k, v, dataclasses.replace(state, key=k.float(), value=v.float())

    def forward(self, x: Tensor, state: GPTState) -> tuple[Tensor, GPTState]:
        """x: (B, T, C); state: this layer's cache (:meth:`RecurrentState.layer`), (B, H, P, D) each."""
        B, T, C = x.shape
        P = state.key.shape[2]
        q, k, v = (
            self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        )  # (B, H, T, D)
        k, v, state = self._extend(state, k, v)
        if P == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # query i (at position P + i) sees keys 0 .. P + i
            pos = torch.arange(P + T, device=x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=pos[None, :] <= (P + pos[:T])[:, None])
        return self.proj(y.transpose(1, 2).reshape(B, T, C)), state

    def step(self, x: Tensor, state: GPTState) -> tuple[Tensor, GPTState]:
        """x: (B, C), one token, which sees every cached position and itself: no mask."""
        B, C = x.shape
        q, k, v = self.qkv(x).view(B, 3, self.n_head, 1, C // self.n_head).unbind(1)  # (B, H, 1, D)
        k, v, state = self._extend(state, k, v)
        return self.proj(F.scaled_dot_product_attention(q, k, v).reshape(B, C)), state


class MLP(nn.Module):
    """Stateless, so one forward serves any number of tokens: (..., C) -> (..., C)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.ffn_dim)
        self.proj = nn.Linear(config.ffn_dim, config.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm residuals around attention and the MLP."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.ln2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, state: GPTState) -> tuple[Tensor, GPTState]:
        """x: (B, T, C); state: this layer's cache."""
        out, state = self.attn(self.ln1(x), state)
        x = x + out
        return x + self.mlp(self.ln2(x)), state

    def step(self, x: Tensor, state: GPTState) -> tuple[Tensor, GPTState]:
        """x: (B, C), one token."""
        out, state = self.attn.step(self.ln1(x), state)
        x = x + out
        return x + self.mlp(self.ln2(x)), state


class GPT(nn.Module):
    """``logits, state = model(tokens, state)`` and ``model.step(tokens, state)`` as for RWKV; the
    state is a :class:`GPTState` KV cache."""

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

    def _checked(self, state: GPTState | None, batch: int, new: int) -> GPTState:
        """The state to continue from, refused with a message if it does not fit ``new`` more tokens."""
        if state is None:
            return self.initial_state(batch)
        if not isinstance(state, GPTState):
            raise StateError(f"expected a GPTState for this GPT model, got {type(state).__name__}")
        c = self.config
        want = (c.n_layer, batch, c.n_head, state.length, c.n_embd // c.n_head)
        for name, t in state.tensors().items():
            if tuple(t.shape) != want:
                raise StateError(
                    f"the cache's {name} has shape {tuple(t.shape)}, this model needs {want} "
                    "(n_layer, batch, heads, positions, head width)"
                )
        if c.n_ctx < state.length + new:
            raise StateError(
                f"{state.length} cached + {new} new tokens exceed this GPT's {c.n_ctx} positions; "
                "start from a shorter prompt or a fresh state"
            )
        return state

    def forward(
        self, tokens: Tensor | list[int], state: GPTState | None = None, *, last_only: bool = False
    ) -> tuple[Tensor, GPTState]:
        """tokens: (B, T) ids. Returns (B, T, V) float32 logits ((B, 1, V) with ``last_only``) and
        the grown cache; the given one is left untouched. One token (T = 1) takes :meth:`step`."""
        tokens = as_token_batch(tokens, self.wte.weight.device, self.config.vocab_size)
        B, T = tokens.shape
        if T == 1:
            logits, state = self.step(tokens[:, 0], state)
            return logits[:, None], state
        state = self._checked(state, B, T)
        P = state.length
        x = self.wte(tokens) + self.wpe(torch.arange(P, P + T, device=tokens.device))  # (B, T, C)
        x, state = run_blocks(self.blocks, x, state, step=False)
        if last_only:
            x = x[:, -1:]
        return self.head(self.ln_f(x)).float(), state

    def step(self, tokens: Tensor, state: GPTState | None = None) -> tuple[Tensor, GPTState]:
        """tokens: (B,) ids, one per sequence. Returns (B, V) float32 logits and the grown cache."""
        tokens = as_token_column(tokens, self.config.vocab_size)
        state = self._checked(state, tokens.shape[0], 1)
        x = self.wte(tokens) + self.wpe.weight[state.length]  # (B, C)
        x, state = run_blocks(self.blocks, x, state, step=True)
        return self.head(self.ln_f(x)).float(), state


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
