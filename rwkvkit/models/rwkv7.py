"""RWKV-7 "Goose": the generalised delta rule (Peng et al. 2025), as in the World and G1 models.

Read top to bottom: config, state, the two mixing layers, a block, the model; each mixing layer and
block has ``forward`` (T tokens) and ``step`` (one token). Parameter names and shapes are BlinkDL's (``att.x_r``, ``att.w0``, ``att.w1``, ``att.r_k``, ...), so a BlinkDL state
dict loads as it is.

What changed from RWKV-6: the state update is a delta rule (ops/wkv7.py) that first removes part of
what the state holds along the normalised key ``kk`` at an in-context learning rate ``a``; the decay
is squashed into (exp(-exp(-0.5)), 1); every layer's value is mixed with layer 0's (``v_first``,
the value residual); the token shift is a plain static lerp again; the FFN has no receptance gate.

Shapes: B batch, T tokens, C = n_embd, H heads of N = head_size channels (C = H N),
F = ffn_dim, V = vocab_size, L = n_layer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..ops.wkv7 import wkv7
from ..state import RecurrentState
from .common import (
    StepConstants,
    as_token_batch,
    as_token_column,
    check_config,
    check_state_shapes,
    count_layers,
    head_norm,
    lowrank,
    relu_squared,
    token_shift,
    zeros,
)

# The decay is w = exp(-exp(-0.5) * sigmoid(w0 + lora)): every channel keeps at least e^-0.61 = 0.55
# of its state per token. Bounding it keeps the delta rule's state (and its chunked form) tame.
MAX_LOG_DECAY_RATE = math.exp(-0.5)


@dataclasses.dataclass(frozen=True)
class RWKV7Config:
    vocab_size: int  # 65536 for the World tokenizer
    n_layer: int
    n_embd: int
    ffn_dim: int  # 4 * n_embd in the released models
    head_size: int = 64  # N; every released RWKV-7 uses 64
    decay_lora: int = 64  # inner widths of the low-rank projections (w1/w2, a1/a2, v1/v2, g1/g2);
    iclr_lora: int = 64  # the official trainer derives them from n_embd, checkpoints carry them
    value_lora: int = 32
    gate_lora: int = 128
    # Layer 0's value is v_first itself, so its v0/v1/v2 are never used; BlinkDL's trainer stores them
    # anyway, rwkv.cpp's converter does not. Kept when present so a checkpoint round-trips unchanged.
    layer0_value_lora: bool = True
    layer_norm_eps: float = 1e-5
    ln_x_eps: float = 64e-5  # GroupNorm over heads; BlinkDL and rwkv.cpp both use 64e-5 for v7
    chunk_len: int = 32  # tokens per chunk in the parallel WKV: a speed knob, not a numerics one

    version: ClassVar[str] = "7"

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    def __post_init__(self) -> None:
        check_config(self)
        if self.n_embd % self.head_size:
            raise ConfigError(f"n_embd={self.n_embd} is not a multiple of head_size={self.head_size}")

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], **overrides: Any) -> RWKV7Config:
        """Read the shapes off a BlinkDL-named state dict."""
        vocab_size, n_embd = sd["emb.weight"].shape
        n_layer = count_layers(sd)
        n_head, head_size = sd["blocks.0.att.r_k"].reshape(-1, sd["blocks.0.att.r_k"].shape[-1]).shape
        if n_head * head_size != n_embd:
            raise ValueError(
                f"att.r_k has shape {tuple(sd['blocks.0.att.r_k'].shape)}, not (H, N) with H N = n_embd"
            )
        b = "blocks.0."
        v1 = sd.get("blocks.1.att.v1", sd.get(b + "att.v1"))  # layer 0's may be absent
        return cls(
            vocab_size=vocab_size,
            n_layer=n_layer,
            n_embd=n_embd,
            ffn_dim=sd[b + "ffn.key.weight"].shape[0],
            head_size=head_size,
            decay_lora=sd[b + "att.w1"].shape[-1],
            iclr_lora=sd[b + "att.a1"].shape[-1],
            value_lora=v1.shape[-1] if v1 is not None else cls.value_lora,
            layer0_value_lora=b + "att.v1" in sd,
            gate_lora=sd[b + "att.g1"].shape[-1],
            **overrides,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, **dataclasses.asdict(self)}


@dataclasses.dataclass
class RWKV7State(RecurrentState):
    """Per layer: the previous token's input to each mixing part, and the WKV state.

    att_x_prev, ffn_x_prev: (L, B, C) float32. wkv: (L, B, H, N, N) float32, rows indexed by value
    channel and columns by key channel (the official package's layout), so y = S r.
    """

    att_x_prev: Tensor
    wkv: Tensor
    ffn_x_prev: Tensor

    version: ClassVar[str] = "7"

    @classmethod
    def shapes(cls, config: RWKV7Config, batch: int) -> dict[str, tuple[int, ...]]:
        L, C, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
        return {"att_x_prev": (L, batch, C), "wkv": (L, batch, H, N, N), "ffn_x_prev": (L, batch, C)}

    @classmethod
    def zeros(cls, config: RWKV7Config, batch: int, device: torch.device | str = "cpu") -> RWKV7State:
        return cls(**{name: zeros(shape, device) for name, shape in cls.shapes(config, batch).items()})


class TimeMixConstants(NamedTuple):
    mix: Tensor  # (6, 1, C) x_r, x_w, x_k, x_v, x_a, x_g stacked: one addcmul gives every input
    w0: Tensor  # the (1, 1, C) vectors below as (C,), so they broadcast over (M, C) tokens
    a0: Tensor
    v0: Tensor | None  # None where the value-residual gate is absent (layer 0 of some files)
    k_k: Tensor
    k_a: Tensor
    r_k: Tensor  # (C,): the bonus weights r_k (H, N) flattened
    # The low-rank matrices, transposed to (out, in) like a linear layer's weight (w1 is (D, C)),
    # in float32 whatever the model's dtype: a one-row product with a (768, 64) bf16 matrix took
    # ~55 us with torch's kernels, in float32 ~7 us. With the native kernels a 16-bit or quantized
    # model stores them in bf16 instead (prepare()'s lowrank_dtype): half the bytes to stream.
    w1: Tensor
    w2: Tensor
    a1: Tensor
    a2: Tensor
    v1: Tensor | None
    v2: Tensor | None
    g1: Tensor
    g2: Tensor
    lowrank = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")  # what prepare() may store narrower


class TimeMix(StepConstants):
    """Time mixing ("att"): the delta-rule WKV with value residual, gated output."""

    def __init__(self, config: RWKV7Config, layer_id: int) -> None:
        super().__init__()
        C, H, N = config.n_embd, config.n_head, config.head_size
        self.layer_id = layer_id
        self.n_head, self.head_size, self.chunk_len = H, N, config.chunk_len
        self.ln_x_eps = config.ln_x_eps
        # Token-shift lerp weights, one per projection input: x + (x_prev - x) * x_?.
        self.x_r = nn.Parameter(torch.zeros(1, 1, C))
        self.x_w = nn.Parameter(torch.zeros(1, 1, C))
        self.x_k = nn.Parameter(torch.zeros(1, 1, C))
        self.x_v = nn.Parameter(torch.zeros(1, 1, C))
        self.x_a = nn.Parameter(torch.zeros(1, 1, C))
        self.x_g = nn.Parameter(torch.zeros(1, 1, C))
        # Decay: bias w0 plus a tanh low-rank term of the input.
        self.w0 = nn.Parameter(torch.zeros(1, 1, C))
        self.w1 = nn.Parameter(torch.zeros(C, config.decay_lora))
        self.w2 = nn.Parameter(torch.zeros(config.decay_lora, C))
        # In-context learning rate a = sigmoid(a0 + low-rank).
        self.a0 = nn.Parameter(torch.zeros(1, 1, C))
        self.a1 = nn.Parameter(torch.zeros(C, config.iclr_lora))
        self.a2 = nn.Parameter(torch.zeros(config.iclr_lora, C))
        # Value residual gate (unused in layer 0, whose value is v_first; see layer0_value_lora).
        if layer_id > 0 or config.layer0_value_lora:
            self.v0 = nn.Parameter(torch.zeros(1, 1, C))
            self.v1 = nn.Parameter(torch.zeros(C, config.value_lora))
            self.v2 = nn.Parameter(torch.zeros(config.value_lora, C))
        # Output gate.
        self.g1 = nn.Parameter(torch.zeros(C, config.gate_lora))
        self.g2 = nn.Parameter(torch.zeros(config.gate_lora, C))
        self.k_k = nn.Parameter(torch.zeros(1, 1, C))  # scales k before normalising it into kk
        self.k_a = nn.Parameter(torch.zeros(1, 1, C))  # how much a also scales the written key
        self.r_k = nn.Parameter(torch.zeros(H, N))  # per-channel weight of the current token's bonus
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=config.ln_x_eps)

    def derive_constants(self) -> TimeMixConstants:
        mix = torch.cat([self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g]).view(6, 1, -1)
        used = self.layer_id > 0  # layer 0's value-residual gate, if stored, is never used
        v0, v1, v2 = (
            (self.v0.view(-1), self.v1.float().t(), self.v2.float().t()) if used else (None, None, None)
        )
        return TimeMixConstants(
            mix, self.w0.view(-1), self.a0.view(-1), v0, self.k_k.view(-1), self.k_a.view(-1), self.r_k.view(-1),
            self.w1.float().t(), self.w2.float().t(), self.a1.float().t(), self.a2.float().t(), v1, v2,
            self.g1.float().t(), self.g2.float().t(),
        )  # fmt: skip

    def _wkv_inputs(
        self, x: Tensor, delta: Tensor, v_first: Tensor | None, c: TimeMixConstants
    ) -> tuple[Tensor, ...]:
        """Everything the WKV and the output need, for M tokens: x and delta = x_prev - x are (M, C),
        v_first (M, C) from layer 0 (None in layer 0). Returns r, log_w, k, v, alpha, beta (float32,
        (M, C)), then r, k, v in x's dtype for the bonus, the gate g and v_first."""
        xr, xw, xk, xv, xa, xg = torch.addcmul(x, delta, c.mix)  # x + (x_prev - x) * x_?
        M, C = x.shape
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        w = c.w0 + lowrank(xw, c.w1, c.w2, torch.tanh)
        a = torch.sigmoid(c.a0 + lowrank(xa, c.a1, c.a2))  # in-context learning rate, (0, 1)
        g = lowrank(xg, c.g1, c.g2, torch.sigmoid)
        kk = F.normalize((k * c.k_k).view(M, self.n_head, -1), dim=-1, p=2.0).view(M, C)
        k = k * (1 + (a - 1) * c.k_a)
        if v_first is None:  # layer 0: its value is every later layer's v_first
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(c.v0 + lowrank(xv, c.v1, c.v2))
        log_w = -MAX_LOG_DECAY_RATE * torch.sigmoid(w.float())  # (M, C), in (-0.61, 0)
        wkv_in = (r.float(), log_w, k.float(), v.float(), -kk.float(), (kk * a).float())
        return (*wkv_in, r, k, v, g, v_first)

    def _mix_output(
        self, y: Tensor, r: Tensor, k: Tensor, v: Tensor, g: Tensor, c: TimeMixConstants
    ) -> Tensor:
        """GroupNorm over heads (float32), the current token's bonus, the gate, the output projection.
        y: (M, C) float32 WKV output; r, k, v, g: (M, C)."""
        M, C = r.shape
        y = head_norm(y, self.n_head, self.ln_x.weight.float(), self.ln_x.bias.float(), self.ln_x_eps)
        # The current token's own contribution, weighted per channel by r_k.
        bonus = (r * k * c.r_k).view(M, self.n_head, -1).sum(dim=-1, keepdim=True) * v.view(
            M, self.n_head, -1
        )
        return self.output((y.to(r.dtype) + bonus.view(M, C)) * g)

    def forward(
        self, x: Tensor, v_first: Tensor | None, state: RWKV7State
    ) -> tuple[Tensor, Tensor, RWKV7State]:
        """x: (B, T, C) normalised input; v_first: (B, T, C) from layer 0 (None in layer 0); state:
        this layer's part (:meth:`RecurrentState.layer`). Returns the output, v_first, the new state."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        c = self.constants()
        delta = token_shift(x, state.att_x_prev.to(x.dtype)) - x
        flat_first = None if v_first is None else v_first.reshape(B * T, C)
        *wkv_in, r, k, v, g, v_first = self._wkv_inputs(
            x.reshape(B * T, C), delta.reshape(B * T, C), flat_first, c
        )
        y, wkv = wkv7(*(t.view(B, T, H, N) for t in wkv_in), state.wkv, self.chunk_len)  # (B, T, H, N)
        out = self._mix_output(y.reshape(B * T, C), r, k, v, g, c)
        new = dataclasses.replace(state, att_x_prev=x[:, -1].float(), wkv=wkv)
        return out.view(B, T, C), v_first.view(B, T, C), new

    def step(self, x: Tensor, v_first: Tensor | None, state: RWKV7State) -> tuple[Tensor, Tensor, RWKV7State]:
        """One token: x, v_first (B, C). No token-shift concatenation; one addcmul gives every input."""
        B, C = x.shape
        c = self.constants()
        *wkv_in, r, k, v, g, v_first = self._wkv_inputs(x, state.att_x_prev.to(x.dtype) - x, v_first, c)
        y, wkv = wkv7(*(t.view(B, self.n_head, -1) for t in wkv_in), state.wkv)  # (B, H, N)
        out = self._mix_output(y.view(B, C), r, k, v, g, c)
        return out, v_first, dataclasses.replace(state, att_x_prev=x.float(), wkv=wkv)


class ChannelMixConstants(NamedTuple):
    x_k: Tensor  # (C,)


class ChannelMix(StepConstants):
    """Channel mixing ("ffn"): a squared-ReLU MLP on the token-shifted input, no receptance gate."""

    def __init__(self, config: RWKV7Config) -> None:
        super().__init__()
        C, Fd = config.n_embd, config.ffn_dim
        self.x_k = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, Fd, bias=False)
        self.value = nn.Linear(Fd, C, bias=False)

    def derive_constants(self) -> ChannelMixConstants:
        return ChannelMixConstants(self.x_k.view(-1))

    def forward(self, x: Tensor, state: RWKV7State) -> tuple[Tensor, RWKV7State]:
        """x: (B, T, C) normalised input; state: this layer's part."""
        xk = x + (token_shift(x, state.ffn_x_prev.to(x.dtype)) - x) * self.x_k
        out = self.value(relu_squared(self.key(xk)))  # (B, T, C) through (B, T, F)
        return out, dataclasses.replace(state, ffn_x_prev=x[:, -1].float())

    def step(self, x: Tensor, state: RWKV7State) -> tuple[Tensor, RWKV7State]:
        """One token: x (B, C)."""
        xk = torch.addcmul(x, state.ffn_x_prev.to(x.dtype) - x, self.constants().x_k)
        out = self.value(relu_squared(self.key(xk)))  # (B, C) through (B, F)
        return out, dataclasses.replace(state, ffn_x_prev=x.float())


class Block(nn.Module):
    """One layer: pre-LayerNorm residual around time mixing (which also passes v_first on), then
    around channel mixing."""

    def __init__(self, config: RWKV7Config, layer_id: int) -> None:
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_eps
        self.normalises_embedding = layer_id == 0
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C, eps=eps)  # normalises the embeddings, block 0 only
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.att = TimeMix(config, layer_id)
        self.ffn = ChannelMix(config)

    def forward(
        self, x: Tensor, v_first: Tensor | None, state: RWKV7State
    ) -> tuple[Tensor, Tensor, RWKV7State]:
        """x: (B, T, C) residual stream; v_first: layer 0's value (None in layer 0); state: this
        layer's part. Returns all three updated."""
        if self.normalises_embedding:
            x = self.ln0(x)
        out, v_first, state = self.att(self.ln1(x), v_first, state)
        x = x + out
        out, state = self.ffn(self.ln2(x), state)
        return x + out, v_first, state

    def step(self, x: Tensor, v_first: Tensor | None, state: RWKV7State) -> tuple[Tensor, Tensor, RWKV7State]:
        """x: (B, C), one token."""
        if self.normalises_embedding:
            x = self.ln0(x)
        out, v_first, state = self.att.step(self.ln1(x), v_first, state)
        x = x + out
        out, state = self.ffn.step(self.ln2(x), state)
        return x + out, v_first, state


class RWKV7(nn.Module):
    """The whole model: ``logits, state = model(tokens, state)`` for any number of tokens, and
    ``logits, state = model.step(tokens, state)`` for one token per sequence."""

    default_state: RWKV7State | None = None  # a learned initial state, as in RWKV4

    def __init__(self, config: RWKV7Config) -> None:
        super().__init__()
        self.config = config
        # No random init of the embedding: weights come from a checkpoint or init_rwkv7_ (see RWKV4).
        self.emb = nn.Embedding(
            config.vocab_size, config.n_embd, _weight=torch.empty(config.vocab_size, config.n_embd)
        )
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def initial_state(self, batch: int = 1) -> RWKV7State:
        if self.default_state is not None:
            return self.default_state.expand(batch)
        return RWKV7State.zeros(self.config, batch, self.emb.weight.device)

    def _checked(self, state: RWKV7State | None, batch: int) -> RWKV7State:
        if state is None:
            return self.initial_state(batch)
        check_state_shapes(state, RWKV7State, RWKV7State.shapes(self.config, batch))
        return state

    def forward(
        self, tokens: Tensor | list[int], state: RWKV7State | None = None, *, last_only: bool = False
    ) -> tuple[Tensor, RWKV7State]:
        """tokens: (B, T) ids (a 1-D tensor or list means B = 1). Returns (B, T, V) float32 logits
        (the last position's only, (B, 1, V), with ``last_only``) and the state after the last
        token; the given state is left untouched. One token (T = 1) takes :meth:`step`."""
        tokens = as_token_batch(tokens, self.emb.weight.device, self.config.vocab_size)
        if tokens.shape[1] == 1:
            logits, state = self.step(tokens[:, 0], state)
            return logits[:, None], state
        state = self._checked(state, tokens.shape[0])
        x = self.emb(tokens)  # (B, T, C)
        v_first: Tensor | None = None
        layers = []
        for i, block in enumerate(self.blocks):
            x, v_first, layer = block(x, v_first, state.layer(i))
            layers.append(layer)
        if last_only:
            x = x[:, -1:]
        return self.head(self.ln_out(x)).float(), RWKV7State.stack(layers)

    def step(self, tokens: Tensor, state: RWKV7State | None = None) -> tuple[Tensor, RWKV7State]:
        """tokens: (B,) ids, one per sequence. Returns (B, V) float32 logits and the new state
        (the given one is left untouched): the recurrent mode, without a time axis."""
        tokens = as_token_column(tokens, self.config.vocab_size)
        state = self._checked(state, tokens.shape[0])
        x = self.emb(tokens)  # (B, C)
        v_first: Tensor | None = None
        layers = []
        for i, block in enumerate(self.blocks):
            x, v_first, layer = block.step(x, v_first, state.layer(i))
            layers.append(layer)
        return self.head(self.ln_out(x)).float(), RWKV7State.stack(layers)


@torch.no_grad()
def init_rwkv7_(model: RWKV7, seed: int = 0) -> RWKV7:
    """BlinkDL's initialisation for training RWKV-7 from scratch (RWKV-LM, RWKV-v7/train_temp), in place.

    Token-shift weights fall from 1 to 0 along the channels, more steeply in deeper layers; decay
    biases w0 span fast to slow channels with a zigzag inside each head; the low-rank up-projections
    are small orthogonal matrices and the down-projections zero; output projections start at zero
    so every block begins as the identity; ln_x's scale grows with depth.
    """
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    C, N, L = cfg.n_embd, cfg.head_size, cfg.n_layer

    def orthogonal(t: Tensor, gain: float) -> None:
        rows, cols = t.shape
        nn.init.orthogonal_(t, gain=gain * (math.sqrt(rows / cols) if rows > cols else 1.0), generator=gen)

    n = torch.arange(C, dtype=torch.float32)
    ddd = (n / C).view(1, 1, C)
    linear = n / (C - 1) - 0.5
    zigzag = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
    zigzag = zigzag * zigzag.abs()
    for i, block in enumerate(model.blocks):
        att, ffn = block.att, block.ffn
        ratio_0_to_1 = i / max(L - 1, 1)
        ratio_1_to_almost0 = 1.0 - i / L
        for name, power in (
            ("x_r", 0.2),
            ("x_w", 0.9),
            ("x_k", 0.7),
            ("x_v", 0.7),
            ("x_a", 0.9),
            ("x_g", 0.2),
        ):
            getattr(att, name).copy_(1.0 - torch.pow(ddd, power * ratio_1_to_almost0))
        decay = -6 + 6 * (n / (C - 1)) ** (1 + ratio_0_to_1**0.3)
        att.w0.copy_((decay + 0.5 + zigzag * 2.5).view(1, 1, C))
        att.a0.copy_((-0.19 + zigzag * 0.3 + linear * 0.4).view(1, 1, C))
        att.k_k.copy_((0.71 - linear * 0.1).view(1, 1, C))
        att.k_a.fill_(1.02)
        att.r_k.fill_(-0.04)
        lora_pairs = [("w1", "w2"), ("a1", "a2"), ("g1", "g2")]
        if hasattr(att, "v0"):
            att.v0.copy_((0.73 - linear * 0.4).view(1, 1, C))
            lora_pairs.append(("v1", "v2"))
        for down, up in lora_pairs:
            getattr(att, down).zero_()
            orthogonal(getattr(att, up), 0.1)
        orthogonal(att.receptance.weight, 1.0)
        orthogonal(att.key.weight, 0.1)
        orthogonal(att.value.weight, 1.0)
        att.output.weight.zero_()
        att.ln_x.weight.fill_(((1 + i) / L) ** 0.7)
        att.ln_x.bias.zero_()
        ffn.x_k.copy_(1.0 - torch.pow(ddd, ratio_1_to_almost0**4))
        orthogonal(ffn.key.weight, 1.0)
        ffn.value.weight.zero_()
        for ln in [block.ln1, block.ln2, *([block.ln0] if i == 0 else [])]:
            ln.weight.fill_(1.0)
            ln.bias.zero_()
    nn.init.uniform_(model.emb.weight, -1e-4, 1e-4, generator=gen)
    V = cfg.vocab_size
    nn.init.orthogonal_(model.head.weight, gain=0.5 * math.sqrt(V / C) if V > C else 0.5, generator=gen)
    model.ln_out.weight.fill_(1.0)
    model.ln_out.bias.zero_()
    return model
