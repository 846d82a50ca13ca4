"""RWKV-4, the architecture of the paper (Peng et al. 2023) and of the Pile and Raven models.

Read top to bottom: config, state, the two mixing layers, a block, the model. Each mixing layer
and block has ``forward`` (T tokens, the parallel mode) and ``step`` (one token, the recurrent
mode); both take and return their layer's part of the state. Parameter names and shapes are
BlinkDL's, so a BlinkDL state dict loads as it is.

Shapes: B batch, T tokens, C = n_embd, F = ffn_dim, V = vocab_size, L = n_layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ..ops.wkv4 import EMPTY_MAX, wkv4
from ..state import RecurrentState
from .common import (
    StepConstants,
    as_token_batch,
    as_token_column,
    check_config,
    check_state_shapes,
    count_layers,
    relu_squared,
    run_blocks,
    token_shift,
    zeros,
)


@dataclasses.dataclass(frozen=True)
class RWKV4Config:
    vocab_size: int  # 50277 for the Pile models (20B tokenizer), 65536 for World, 256 for bytes
    n_layer: int
    n_embd: int
    ffn_dim: int  # channel-mixing width; 4 * n_embd in the official models, free here
    layer_norm_eps: float = 1e-5  # what BlinkDL, transformers and rwkv.cpp all use for v4
    # Tokens per chunk in the parallel WKV; a speed knob, not a numerics one. On the CPU a 169M
    # prefill of 512 tokens (matmul form, ops/wkv4.py) ran fastest at 16, ~1.2x 8 and 32;
    # the row-max fallback alone is fastest at 8 (benchmarks/wkv_chunk_len.py [--whole-model]).
    chunk_len: int = 16

    version: ClassVar[str] = "4"

    def __post_init__(self) -> None:
        check_config(self)

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], **overrides: Any) -> RWKV4Config:
        """Read the shapes off a BlinkDL-named state dict."""
        vocab_size, n_embd = sd["emb.weight"].shape
        n_layer = count_layers(sd)
        ffn_dim = sd["blocks.0.ffn.key.weight"].shape[0]
        return cls(vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, ffn_dim=ffn_dim, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, **dataclasses.asdict(self)}


@dataclasses.dataclass
class RWKV4State(RecurrentState):
    """Per layer: the previous token's input to each mixing part, and the WKV sums.

    All (L, B, C) float32. ``wkv_num * e^wkv_max`` and ``wkv_den * e^wkv_max`` are the decayed
    sums of past ``e^k v`` and ``e^k`` (see ops/wkv4.py).
    """

    att_x_prev: Tensor
    wkv_num: Tensor
    wkv_den: Tensor
    wkv_max: Tensor
    ffn_x_prev: Tensor

    version: ClassVar[str] = "4"

    @classmethod
    def shapes(cls, config: Any, batch: int) -> dict[str, tuple[int, ...]]:
        names = ("att_x_prev", "wkv_num", "wkv_den", "wkv_max", "ffn_x_prev")
        return dict.fromkeys(names, (config.n_layer, batch, config.n_embd))

    @classmethod
    def zeros(cls, config: Any, batch: int, device: torch.device | str = "cpu") -> RWKV4State:
        state = cls(**{name: zeros(shape, device) for name, shape in cls.shapes(config, batch).items()})
        state.wkv_max.fill_(EMPTY_MAX)
        return state


class TimeMixConstants(NamedTuple):
    mix: Tensor  # (3, 1, C) time_mix_k, _v, _r stacked: one lerp gives xk, xv, xr
    decay: Tensor  # (C,) float32 w = -exp(time_decay)
    first: Tensor  # (C,) float32 u = time_first


class TimeMix(StepConstants):
    """Time mixing ("att"): receptance-gated WKV over the past tokens."""

    def __init__(self, config: RWKV4Config) -> None:
        super().__init__()
        C = config.n_embd
        self.chunk_len = config.chunk_len
        self.time_decay = nn.Parameter(torch.zeros(C))  # per-channel decay rate is exp(time_decay)
        self.time_first = nn.Parameter(torch.zeros(C))  # bonus u for the current token
        self.time_mix_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_mix_v = nn.Parameter(torch.zeros(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)

    def derive_constants(self) -> TimeMixConstants:
        mix = torch.cat([self.time_mix_k, self.time_mix_v, self.time_mix_r]).view(3, 1, -1)
        return TimeMixConstants(mix, -torch.exp(self.time_decay.float()), self.time_first.float())

    def forward(self, x: Tensor, state: RWKV4State) -> tuple[Tensor, RWKV4State]:
        """x: (B, T, C) normalised input; state: this layer's part (:meth:`RecurrentState.layer`)."""
        c = self.constants()
        shifted = token_shift(x, state.att_x_prev.to(x.dtype))
        xk = torch.lerp(shifted, x, self.time_mix_k)  # mix * x + (1 - mix) * shifted
        xv = torch.lerp(shifted, x, self.time_mix_v)
        xr = torch.lerp(shifted, x, self.time_mix_r)
        r = torch.sigmoid(self.receptance(xr))
        k = self.key(xk).float()
        v = self.value(xv).float()
        out, (num, den, mx) = wkv4(
            c.decay, c.first, k, v, (state.wkv_num, state.wkv_den, state.wkv_max), self.chunk_len
        )
        new = dataclasses.replace(state, att_x_prev=x[:, -1].float(), wkv_num=num, wkv_den=den, wkv_max=mx)
        return self.output(r * out.to(r.dtype)), new

    def step(self, x: Tensor, state: RWKV4State) -> tuple[Tensor, RWKV4State]:
        """One token: x (B, C). No token-shift concatenation; one lerp for the three inputs."""
        c = self.constants()
        xk, xv, xr = torch.lerp(state.att_x_prev.to(x.dtype), x, c.mix)  # 3 x (B, C)
        r = torch.sigmoid(self.receptance(xr))
        k = self.key(xk).float()
        v = self.value(xv).float()
        out, (num, den, mx) = wkv4(c.decay, c.first, k, v, (state.wkv_num, state.wkv_den, state.wkv_max))
        new = dataclasses.replace(state, att_x_prev=x.float(), wkv_num=num, wkv_den=den, wkv_max=mx)
        return self.output(r * out.to(r.dtype)), new


class ChannelMixConstants(NamedTuple):
    mix: Tensor  # (2, 1, C) time_mix_k, _r stacked


class ChannelMix(StepConstants):
    """Channel mixing ("ffn"): a receptance-gated squared-ReLU MLP."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        C, Fd = config.n_embd, config.ffn_dim
        self.time_mix_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, Fd, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(Fd, C, bias=False)

    def derive_constants(self) -> ChannelMixConstants:
        return ChannelMixConstants(torch.cat([self.time_mix_k, self.time_mix_r]).view(2, 1, -1))

    def forward(self, x: Tensor, state: RWKV4State) -> tuple[Tensor, RWKV4State]:
        """x: (B, T, C) normalised input; state: this layer's part."""
        shifted = token_shift(x, state.ffn_x_prev.to(x.dtype))
        xk = torch.lerp(shifted, x, self.time_mix_k)
        xr = torch.lerp(shifted, x, self.time_mix_r)
        hidden = relu_squared(self.key(xk))  # (B, T, F)
        out = torch.sigmoid(self.receptance(xr)) * self.value(hidden)
        return out, dataclasses.replace(state, ffn_x_prev=x[:, -1].float())

    def step(self, x: Tensor, state: RWKV4State) -> tuple[Tensor, RWKV4State]:
        """One token: x (B, C)."""
        xk, xr = torch.lerp(state.ffn_x_prev.to(x.dtype), x, self.constants().mix)  # 2 x (B, C)
        hidden = relu_squared(self.key(xk))  # (B, F)
        out = torch.sigmoid(self.receptance(xr)) * self.value(hidden)
        return out, dataclasses.replace(state, ffn_x_prev=x.float())


class Block(nn.Module):
    """One layer: pre-LayerNorm residual around time mixing, then around channel mixing.

    RWKV-5 and RWKV-6 use this block with their own mixing layers.
    """

    def __init__(
        self, config: Any, layer_id: int, time_mix: type[nn.Module], channel_mix: type[nn.Module]
    ) -> None:
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_eps
        self.normalises_embedding = layer_id == 0
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C, eps=eps)  # normalises the embeddings, block 0 only
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.att = time_mix(config)
        self.ffn = channel_mix(config)

    def forward(self, x: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        """x: (B, T, C) residual stream; state: this layer's part. Returns both updated."""
        if self.normalises_embedding:
            x = self.ln0(x)
        out, state = self.att(self.ln1(x), state)
        x = x + out
        out, state = self.ffn(self.ln2(x), state)
        return x + out, state

    def step(self, x: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        """x: (B, C), one token."""
        if self.normalises_embedding:
            x = self.ln0(x)
        out, state = self.att.step(self.ln1(x), state)
        x = x + out
        out, state = self.ffn.step(self.ln2(x), state)
        return x + out, state


class RWKV4(nn.Module):
    """The whole model: ``logits, state = model(tokens, state)`` for any number of tokens, and
    ``logits, state = model.step(tokens, state)`` for one token per sequence.

    RWKV-5 and RWKV-6 (models/rwkv5.py, models/rwkv6.py) reuse this class with their own mixing
    layers and state types.
    """

    time_mix: ClassVar[type[nn.Module]] = TimeMix
    channel_mix: ClassVar[type[nn.Module]] = ChannelMix
    state_cls: ClassVar[type[RecurrentState]] = RWKV4State
    # A learned initial state (``rwkvkit finetune --method state``; ``load_model(..., state=)``) that
    # replaces the zeros: batch 1, not a registered tensor, so it never enters the state dict.
    default_state: RecurrentState | None = None

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        # Weights come from a checkpoint or an init function, so nn.Embedding's own random init is
        # skipped: on the meta device it would import torch's compiler stack (~4 s per process).
        self.emb = nn.Embedding(
            config.vocab_size, config.n_embd, _weight=torch.empty(config.vocab_size, config.n_embd)
        )
        self.blocks = nn.ModuleList(
            Block(config, i, self.time_mix, self.channel_mix) for i in range(config.n_layer)
        )
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def initial_state(self, batch: int = 1) -> RecurrentState:
        if self.default_state is not None:
            return self.default_state.expand(batch)
        return self.state_cls.zeros(self.config, batch, self.emb.weight.device)

    def _checked(self, state: RecurrentState | None, batch: int) -> RecurrentState:
        if state is None:
            return self.initial_state(batch)
        check_state_shapes(state, self.state_cls, self.state_cls.shapes(self.config, batch))
        return state

    def forward(
        self, tokens: Tensor | list[int], state: RecurrentState | None = None, *, last_only: bool = False
    ) -> tuple[Tensor, RecurrentState]:
        """tokens: (B, T) ids (a 1-D tensor or list means B = 1). Returns (B, T, V) float32 logits
        and the state after the last token; the given state is left untouched.

        ``last_only=True`` returns the last position's logits only, (B, 1, V): prompt prefill needs
        no others, and the head is a large share of a small model's work (a third at 169M).
        One token (T = 1) takes :meth:`step`."""
        tokens = as_token_batch(tokens, self.emb.weight.device, self.config.vocab_size)
        if tokens.shape[1] == 1:
            logits, state = self.step(tokens[:, 0], state)
            return logits[:, None], state
        state = self._checked(state, tokens.shape[0])
        x, state = run_blocks(self.blocks, self.emb(tokens), state, step=False)  # (B, T, C)
        if last_only:
            x = x[:, -1:]
        return self.head(self.ln_out(x)).float(), state

    def step(self, tokens: Tensor, state: RecurrentState | None = None) -> tuple[Tensor, RecurrentState]:
        """tokens: (B,) ids, one per sequence. Returns (B, V) float32 logits and the new state
        (the given one is left untouched): the recurrent mode, without a time axis."""
        tokens = as_token_column(tokens, self.config.vocab_size)
        state = self._checked(state, tokens.shape[0])
        x, state = run_blocks(self.blocks, self.emb(tokens), state, step=True)  # (B, C)
        return self.head(self.ln_out(x)).float(), state
