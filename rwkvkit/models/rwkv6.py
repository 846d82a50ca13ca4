"""RWKV-6 "Finch": RWKV-5.2 with a data-dependent token shift and a data-dependent decay.

Read top to bottom: config, state, the two mixing layers, the model. The WKV is RWKV-5's
(ops/wkv5.py) with a decay that changes every token; the block structure and the model loop are
RWKV-5's (models/rwkv5.py), so only what differs is written here. Parameter names and shapes are
BlinkDL's.

Token shift ("ddlerp"): each projection input is ``x + (x_prev - x) * (time_maa_? + m_?)``, where
the five offsets m_w, m_k, m_v, m_r, m_g come from one low-rank tanh projection (time_maa_w1/w2) of
``x + (x_prev - x) * time_maa_x``. Decay: ``w = exp(-exp(time_decay + tanh(xw @ w1) @ w2))``.

Shapes: B batch, T tokens, C = n_embd, A = dim_att, H heads of N = head_size channels,
D = low-rank widths, F = ffn_dim, V = vocab_size, L = n_layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.wkv5 import wkv5
from .common import token_shift
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
        if self.att_width % self.head_size:
            raise ValueError(f"dim_att={self.att_width} is not a multiple of head_size={self.head_size}")

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], **overrides: Any) -> RWKV6Config:
        """Read the shapes off a BlinkDL-named state dict."""
        vocab_size, n_embd = sd["emb.weight"].shape
        n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
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


class TimeMix(nn.Module):
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

    def forward(self, x: Tensor, x_prev: Tensor, wkv_state: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, T, C) normalised input; x_prev: (B, C); wkv_state: (B, H, N, N)."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        delta = token_shift(x, x_prev) - x
        # Data-dependent lerp offsets, (5, B, T, C) for w, k, v, r, g.
        mixed = (
            torch.tanh((x + delta * self.time_maa_x) @ self.time_maa_w1).view(B * T, 5, -1).transpose(0, 1)
        )
        m_w, m_k, m_v, m_r, m_g = torch.bmm(mixed, self.time_maa_w2).view(5, B, T, C).unbind(0)
        xw = x + delta * (self.time_maa_w + m_w)
        r = self.receptance(x + delta * (self.time_maa_r + m_r))
        k = self.key(x + delta * (self.time_maa_k + m_k))
        v = self.value(x + delta * (self.time_maa_v + m_v))
        g = F.silu(self.gate(x + delta * (self.time_maa_g + m_g)))
        w = self.time_decay.float() + (torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2).float()
        log_w = -torch.exp(w)  # (B, T, A)
        r, log_w, k, v = (t.float().view(B, T, H, N) for t in (r, log_w, k, v))
        y, wkv_state = wkv5(r, log_w, k, v, self.time_faaaa.float().view(H, N), wkv_state, self.chunk_len)
        y = F.group_norm(
            y.reshape(B * T, H * N), H, self.ln_x.weight.float(), self.ln_x.bias.float(), self.ln_x_eps
        )
        return self.output(y.view(B, T, H * N).to(x.dtype) * g), wkv_state


class ChannelMix(nn.Module):
    """Channel mixing ("ffn"): RWKV-5's, with the lerp written as x + (x_prev - x) * time_maa_?."""

    def __init__(self, config: RWKV6Config) -> None:
        super().__init__()
        C, Fd = config.n_embd, config.ffn_dim
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, Fd, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(Fd, C, bias=False)

    def forward(self, x: Tensor, x_prev: Tensor) -> Tensor:
        # x: (B, T, C); x_prev: (B, C)
        delta = token_shift(x, x_prev) - x
        hidden = torch.square(torch.relu(self.key(x + delta * self.time_maa_k)))  # (B, T, F)
        return torch.sigmoid(self.receptance(x + delta * self.time_maa_r)) * self.value(hidden)


class RWKV6(RWKV5):
    """The whole model: RWKV-5's loop with RWKV-6's mixing layers and state type."""

    time_mix: ClassVar[type[nn.Module]] = TimeMix
    channel_mix: ClassVar[type[nn.Module]] = ChannelMix
    state_cls: ClassVar[type[RWKV5State]] = RWKV6State
