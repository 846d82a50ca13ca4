"""RWKV-6 "Finch": RWKV-5.2 with a data-dependent token shift and a data-dependent decay.

Read top to bottom: config, state, the two mixing layers (``forward`` for T tokens, ``step`` for
one), the model. The WKV is RWKV-5's (ops/wkv5.py) with a decay that changes every token; the block
and the layer loop are RWKV-4's (models/rwkv4.py), so only what differs is written here. Parameter
names and shapes are BlinkDL's.

Token shift ("ddlerp"): each projection input is ``x + (x_prev - x) * (time_maa_? + m_?)``, where
the five offsets m_w, m_k, m_v, m_r, m_g come from one low-rank tanh projection (time_maa_w1/w2) of
``x + (x_prev - x) * time_maa_x``. Decay: ``w = exp(-exp(time_decay + tanh(xw @ w1) @ w2))``.

Shapes: B batch, T tokens, C = n_embd, A = dim_att, H heads of N = head_size channels,
D = low-rank widths, F = ffn_dim, V = vocab_size, L = n_layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..ops.exp import exp
from ..ops.linear import linear
from ..ops.wkv5 import wkv5
from ..state import RecurrentState
from .common import StepConstants, check_config, count_layers, head_norm, lowrank, relu_squared, token_shift
from .rwkv5 import RWKV5, RWKV5State


@dataclasses.dataclass(frozen=True)
class RWKV6Config:
    vocab_size: int  # 65536 for the World models
    n_layer: int
    n_embd: int
    ffn_dim: int  # 3.5 * n_embd in the released World models
    head_size: int = 64
    dim_att: int = 0  # attention width A; 0 means n_embd
    mix_lora: int = 32  # D of time_maa_w1/w2 (32 in the released models, 64 from 4096 wide)
    decay_lora: int = 64  # D of time_decay_w1/w2 (64; 128 from 4096 wide)
    layer_norm_eps: float = 1e-5
    ln_x_eps: float = 64e-5  # BlinkDL's and rwkv.cpp's value for v6
    chunk_len: int = 32  # tokens per chunk in the parallel WKV: a speed knob, not a numerics one

    version: ClassVar[str] = "6"

    @property
    def att_width(self) -> int:
        return self.dim_att or self.n_embd

    @property
    def n_head(self) -> int:
        return self.att_width // self.head_size

    def __post_init__(self) -> None:
        check_config(self)
        if self.att_width % self.head_size:
            raise ConfigError(f"dim_att={self.att_width} is not a multiple of head_size={self.head_size}")

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], **overrides: Any) -> RWKV6Config:
        """Read the shapes off a BlinkDL-named state dict."""
        vocab_size, n_embd = sd["emb.weight"].shape
        n_layer = count_layers(sd)
        a = "blocks.0.att."
        faaaa = sd[a + "time_faaaa"]
        n_head = faaaa.shape[0] if faaaa.dim() >= 2 else 1
        dim_att = sd[a + "key.weight"].shape[0]
        return cls(
            vocab_size=vocab_size,
            n_layer=n_layer,
            n_embd=n_embd,
            ffn_dim=sd["blocks.0.ffn.key.weight"].shape[0],
            head_size=dim_att // n_head,
            dim_att=dim_att,
            mix_lora=sd[a + "time_maa_w2"].shape[1],
            decay_lora=sd[a + "time_decay_w1"].shape[1],
            **overrides,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, **dataclasses.asdict(self)}


@dataclasses.dataclass
class RWKV6State(RWKV5State):
    """The same fields and layout as :class:`RWKV5State`; a separate type so that a state is only
    ever used with the version that made it."""

    version: ClassVar[str] = "6"


class TimeMixConstants(NamedTuple):
    maa: Tensor  # (5, 1, C) float32 time_maa_w, _k, _v, _r, _g stacked, in the order of the offsets
    decay: Tensor  # (A,) float32 time_decay, the decay's data-independent part
    bonus: Tensor  # (H, N) float32 u
    # The low-rank matrices in float32 whatever the model's dtype: one-row products with small
    # 16-bit matrices are several times slower on the CPU than in float32 (see models/rwkv7.py).
    # maa_w1, decay_w1 and decay_w2 transposed to (out, in), like a linear layer's weight.
    maa_w1: Tensor  # (5 D, C)
    maa_w2: Tensor  # (5, D, C), as stored: one batched product gives the five offsets
    decay_w1: Tensor  # (D, C)
    decay_w2: Tensor  # (A, D)
    lowrank = ("maa_w1", "maa_w2", "decay_w1", "decay_w2")  # what prepare() may store narrower


class TimeMix(StepConstants):
    """Time mixing ("att"): RWKV-5.2's gated multi-head WKV with data-dependent shift and decay."""

    def __init__(self, config: RWKV6Config) -> None:
        super().__init__()
        C, A, H, N = config.n_embd, config.att_width, config.n_head, config.head_size
        self.n_head, self.head_size, self.chunk_len, self.ln_x_eps = H, N, config.chunk_len, config.ln_x_eps
        self.time_maa_x = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_w = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_v = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_g = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_w1 = nn.Parameter(torch.zeros(C, 5 * config.mix_lora))  # shared down-projection
        self.time_maa_w2 = nn.Parameter(torch.zeros(5, config.mix_lora, C))  # one up-projection each
        self.time_decay = nn.Parameter(torch.zeros(1, 1, A))
        self.time_decay_w1 = nn.Parameter(torch.zeros(C, config.decay_lora))
        self.time_decay_w2 = nn.Parameter(torch.zeros(config.decay_lora, A))
        self.time_faaaa = nn.Parameter(torch.zeros(H, N))  # the bonus u
        self.receptance = nn.Linear(C, A, bias=False)
        self.key = nn.Linear(C, A, bias=False)
        self.value = nn.Linear(C, A, bias=False)
        self.gate = nn.Linear(C, A, bias=False)
        self.output = nn.Linear(A, C, bias=False)
        self.ln_x = nn.GroupNorm(H, A, eps=config.ln_x_eps)

    def derive_constants(self) -> TimeMixConstants:
        maa = torch.cat([self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g])
        lora = (self.time_maa_w1.float().t(), self.time_maa_w2.float(), self.time_decay_w1.float().t(),
                self.time_decay_w2.float().t())  # fmt: skip
        return TimeMixConstants(
            maa.float().view(5, 1, -1), self.time_decay.float().view(-1), self.time_faaaa.float(), *lora
        )

    def _projections(self, x: Tensor, delta: Tensor, c: TimeMixConstants) -> tuple[Tensor, ...]:
        """r, log_w, k, v (float32) and the gate g for M tokens: x, delta = x_prev - x, (M, C)."""
        M = x.shape[0]
        # Data-dependent lerp offsets, (5, M, C) for w, k, v, r, g; the low-rank parts in float32.
        xx = torch.addcmul(x, delta, self.time_maa_x.view(-1)).to(c.maa_w1.dtype)
        h = torch.tanh(linear(xx, c.maa_w1))  # (M, 5 D)
        offsets = torch.bmm(h.view(M, 5, -1).transpose(0, 1), c.maa_w2).float()  # (5, M, C)
        mix = (c.maa + offsets).to(x.dtype)
        xw, xk, xv, xr, xg = torch.addcmul(x, delta, mix)  # x + delta * (time_maa_? + m_?)
        log_w = -exp(c.decay + lowrank(xw.float(), c.decay_w1, c.decay_w2, torch.tanh))
        r, k, v = self.receptance(xr).float(), self.key(xk).float(), self.value(xv).float()
        return r, log_w, k, v, F.silu(self.gate(xg))

    def _mix_output(self, y: Tensor, g: Tensor) -> Tensor:
        """GroupNorm over heads (in float32), the gate, the output projection. y: (M, A) float32."""
        y = head_norm(y, self.n_head, self.ln_x.weight.float(), self.ln_x.bias.float(), self.ln_x_eps)
        return self.output(y.to(g.dtype) * g)

    def forward(self, x: Tensor, state: RWKV5State) -> tuple[Tensor, RWKV5State]:
        """x: (B, T, C) normalised input; state: this layer's part (:meth:`RecurrentState.layer`)."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        c = self.constants()
        delta = token_shift(x, state.att_x_prev.to(x.dtype)) - x
        r, log_w, k, v, g = self._projections(x.reshape(B * T, C), delta.reshape(B * T, C), c)
        r, log_w, k, v = (t.view(B, T, H, N) for t in (r, log_w, k, v))
        y, wkv = wkv5(r, log_w, k, v, c.bonus, state.wkv, self.chunk_len)
        out = self._mix_output(y.reshape(B * T, H * N), g)
        return out.view(B, T, C), dataclasses.replace(state, att_x_prev=x[:, -1].float(), wkv=wkv)

    def step(self, x: Tensor, state: RWKV5State) -> tuple[Tensor, RWKV5State]:
        """One token: x (B, C). No token-shift concatenation; one addcmul gives every input."""
        B, C = x.shape
        H, N = self.n_head, self.head_size
        c = self.constants()
        r, log_w, k, v, g = self._projections(x, state.att_x_prev.to(x.dtype) - x, c)
        y, wkv = wkv5(*(t.view(B, H, N) for t in (r, log_w, k, v)), c.bonus, state.wkv)  # (B, H, N)
        return self._mix_output(y.view(B, H * N), g), dataclasses.replace(
            state, att_x_prev=x.float(), wkv=wkv
        )


class ChannelMixConstants(NamedTuple):
    maa: Tensor  # (2, 1, C) time_maa_k, _r stacked


class ChannelMix(StepConstants):
    """Channel mixing ("ffn"): RWKV-5's, with the lerp written as x + (x_prev - x) * time_maa_?."""

    def __init__(self, config: RWKV6Config) -> None:
        super().__init__()
        C, Fd = config.n_embd, config.ffn_dim
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, Fd, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(Fd, C, bias=False)

    def derive_constants(self) -> ChannelMixConstants:
        return ChannelMixConstants(torch.cat([self.time_maa_k, self.time_maa_r]).view(2, 1, -1))

    def forward(self, x: Tensor, state: RWKV5State) -> tuple[Tensor, RWKV5State]:
        """x: (B, T, C) normalised input; state: this layer's part."""
        delta = token_shift(x, state.ffn_x_prev.to(x.dtype)) - x
        hidden = relu_squared(self.key(x + delta * self.time_maa_k))  # (B, T, F)
        out = torch.sigmoid(self.receptance(x + delta * self.time_maa_r)) * self.value(hidden)
        return out, dataclasses.replace(state, ffn_x_prev=x[:, -1].float())

    def step(self, x: Tensor, state: RWKV5State) -> tuple[Tensor, RWKV5State]:
        """One token: x (B, C)."""
        xk, xr = torch.addcmul(x, state.ffn_x_prev.to(x.dtype) - x, self.constants().maa)  # 2 x (B, C)
        hidden = relu_squared(self.key(xk))  # (B, F)
        out = torch.sigmoid(self.receptance(xr)) * self.value(hidden)
        return out, dataclasses.replace(state, ffn_x_prev=x.float())


class RWKV6(RWKV5):
    """The whole model: RWKV-4's layer loop (models/rwkv4.py) with RWKV-6's mixing layers and state."""

    time_mix: ClassVar[type[nn.Module]] = TimeMix
    channel_mix: ClassVar[type[nn.Module]] = ChannelMix
    state_cls: ClassVar[type[RecurrentState]] = RWKV6State
