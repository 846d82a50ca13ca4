"""RWKV-5 "Eagle" (5.0, 5.1, 5.2): multi-head linear attention with a matrix-valued state.

Read top to bottom: config, state, the time mixing layer (``forward`` for T tokens, ``step`` for
one), the model; the channel mixing, the block and the layer loop are RWKV-4's (models/rwkv4.py).
Parameter names and shapes are BlinkDL's, so a BlinkDL state dict loads as it is.

The three sub-versions differ only in parameters, so they are one model whose config says which
parameters exist (read off the checkpoint's keys and shapes, never its file name):
- 5.0: no output gate; one decay and one bonus per head (``time_decay``, ``time_first`` of shape (H,));
- 5.1: adds the SiLU output gate (``time_mix_g``, ``att.gate``);
- 5.2: decay and bonus per channel (``time_decay``, ``time_faaaa`` of shape (H, N)).
``time_first`` holds the bonus's logarithm (u = e^time_first); ``time_faaaa`` holds the bonus itself.

rwkv.cpp numbers these differently (its "5.1" is 5.0 here) and runs the GroupNorm ``ln_x`` with
eps 1e-5 where BlinkDL's code uses 64e-5; that is why ``ln_x_eps`` is part of the config.

Shapes: B batch, T tokens, C = n_embd, A = dim_att (= C in released models), H heads of N =
head_size channels (A = H N), F = ffn_dim, V = vocab_size, L = n_layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..ops.wkv5 import wkv5
from ..state import RecurrentState
from .common import StepConstants, check_config, count_layers, head_norm, token_shift, zeros
from .rwkv4 import RWKV4, ChannelMix  # channel mixing ("ffn") and the layer loop are RWKV-4's


@dataclasses.dataclass(frozen=True)
class RWKV5Config:
    vocab_size: int  # 65536 for the World models
    n_layer: int
    n_embd: int
    ffn_dim: int  # 3.5 * n_embd in the released World models
    head_size: int = 64
    dim_att: int = 0  # attention width A; 0 means n_embd
    gate: bool = True  # 5.1 and 5.2 gate the output with SiLU(gate(x)); 5.0 does not
    per_channel_decay: bool = True  # 5.2: decay and bonus per channel; 5.0/5.1: per head
    log_bonus: bool = False  # the bonus is stored as time_first = log u (5.0/5.1) rather than time_faaaa = u
    layer_norm_eps: float = 1e-5
    ln_x_eps: float = 64e-5  # BlinkDL's value; rwkv.cpp files need 1e-5 (see the module docstring)
    chunk_len: int = 32  # tokens per chunk in the parallel WKV: a speed knob, not a numerics one

    version: ClassVar[str] = "5"

    @property
    def att_width(self) -> int:
        return self.dim_att or self.n_embd

    @property
    def n_head(self) -> int:
        return self.att_width // self.head_size

    @property
    def bonus_name(self) -> str:
        return "time_first" if self.log_bonus else "time_faaaa"

    def __post_init__(self) -> None:
        check_config(self)
        if self.att_width % self.head_size:
            raise ConfigError(f"dim_att={self.att_width} is not a multiple of head_size={self.head_size}")

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], **overrides: Any) -> RWKV5Config:
        """Read the shapes and the sub-version's parameters off a BlinkDL-named state dict."""
        vocab_size, n_embd = sd["emb.weight"].shape
        n_layer = count_layers(sd)
        a = "blocks.0.att."
        dim_att = sd[a + "key.weight"].shape[0]
        decay = sd[a + "time_decay"].squeeze()
        per_channel = decay.dim() == 2 and decay.shape[1] > 1
        n_head = decay.shape[0] if decay.dim() >= 1 else 1
        return cls(
            vocab_size=vocab_size,
            n_layer=n_layer,
            n_embd=n_embd,
            ffn_dim=sd["blocks.0.ffn.key.weight"].shape[0],
            head_size=dim_att // n_head,
            dim_att=dim_att,
            gate=a + "gate.weight" in sd,
            per_channel_decay=per_channel,
            log_bonus=a + "time_faaaa" not in sd,
            **overrides,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, **dataclasses.asdict(self)}


@dataclasses.dataclass
class RWKV5State(RecurrentState):
    """Per layer: the previous token's input to each mixing part, and the WKV state.

    att_x_prev, ffn_x_prev: (L, B, C) float32. wkv: (L, B, H, N, N) float32, rows indexed by key
    channel and columns by value channel (the official package's layout), so y = r^T S.
    """

    att_x_prev: Tensor
    wkv: Tensor
    ffn_x_prev: Tensor

    version: ClassVar[str] = "5"

    @classmethod
    def shapes(cls, config: Any, batch: int) -> dict[str, tuple[int, ...]]:
        L, C, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
        return {"att_x_prev": (L, batch, C), "wkv": (L, batch, H, N, N), "ffn_x_prev": (L, batch, C)}

    @classmethod
    def zeros(cls, config: Any, batch: int, device: torch.device | str = "cpu") -> RWKV5State:
        return cls(**{name: zeros(shape, device) for name, shape in cls.shapes(config, batch).items()})


class TimeMixConstants(NamedTuple):
    mix: Tensor  # (3 or 4, 1, C) time_mix_k, _v, _r (, _g) stacked: one lerp gives every input
    log_w: Tensor  # (H, N) float32 log-decay -exp(time_decay)
    bonus: Tensor  # (H, N) float32 u


class TimeMix(StepConstants):
    """Time mixing ("att"): multi-head WKV with static decay, GroupNorm, optional SiLU gate."""

    def __init__(self, config: RWKV5Config) -> None:
        super().__init__()
        C, A, H, N = config.n_embd, config.att_width, config.n_head, config.head_size
        self.n_head, self.head_size, self.chunk_len = H, N, config.chunk_len
        self.ln_x_eps, self.log_bonus, self.gated = config.ln_x_eps, config.log_bonus, config.gate
        self.time_mix_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_mix_v = nn.Parameter(torch.zeros(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.zeros(1, 1, C))
        # Decay rate e^time_decay and bonus: per channel (H, N) in 5.2, per head (H,) before.
        decay_shape = (H, N) if config.per_channel_decay else (H,)
        self.time_decay = nn.Parameter(torch.zeros(decay_shape))
        self.register_parameter(config.bonus_name, nn.Parameter(torch.zeros(decay_shape)))
        self.receptance = nn.Linear(C, A, bias=False)
        self.key = nn.Linear(C, A, bias=False)
        self.value = nn.Linear(C, A, bias=False)
        self.output = nn.Linear(A, C, bias=False)
        self.ln_x = nn.GroupNorm(H, A, eps=config.ln_x_eps)
        if config.gate:
            self.time_mix_g = nn.Parameter(torch.zeros(1, 1, C))
            self.gate = nn.Linear(C, A, bias=False)

    def derive_constants(self) -> TimeMixConstants:
        H, N = self.n_head, self.head_size
        mixes = [self.time_mix_k, self.time_mix_v, self.time_mix_r]
        if self.gated:
            mixes.append(self.time_mix_g)
        log_w = -torch.exp(self.time_decay.float()).reshape(H, -1).expand(H, N)
        u = self.time_first.float().exp() if self.log_bonus else self.time_faaaa.float()
        return TimeMixConstants(
            torch.cat(mixes).view(len(mixes), 1, -1), log_w, u.reshape(H, -1).expand(H, N)
        )

    def _mix_output(self, y: Tensor, g_input: Tensor | None, dtype: torch.dtype) -> Tensor:
        """GroupNorm over heads (in float32), the optional SiLU gate, the output projection.
        y: (M, A) float32 for M tokens; g_input: the gate's input, (M, C)."""
        y = head_norm(y, self.n_head, self.ln_x.weight.float(), self.ln_x.bias.float(), self.ln_x_eps)
        y = y.to(dtype)
        if g_input is not None:
            y = y * F.silu(self.gate(g_input))
        return self.output(y)

    def forward(self, x: Tensor, state: RWKV5State) -> tuple[Tensor, RWKV5State]:
        """x: (B, T, C) normalised input; state: this layer's part (:meth:`RecurrentState.layer`)."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        c = self.constants()
        shifted = token_shift(x, state.att_x_prev.to(x.dtype))
        r = self.receptance(torch.lerp(shifted, x, self.time_mix_r))
        k = self.key(torch.lerp(shifted, x, self.time_mix_k))
        v = self.value(torch.lerp(shifted, x, self.time_mix_v))
        heads = [t.float().view(B, T, H, N) for t in (r, k, v)]
        y, wkv = wkv5(
            heads[0], c.log_w.expand(B, T, H, N), heads[1], heads[2], c.bonus, state.wkv, self.chunk_len
        )
        xg = torch.lerp(shifted, x, self.time_mix_g) if self.gated else None
        out = self._mix_output(y.reshape(B * T, H * N), None if xg is None else xg.reshape(B * T, C), x.dtype)
        return out.view(B, T, C), dataclasses.replace(state, att_x_prev=x[:, -1].float(), wkv=wkv)

    def step(self, x: Tensor, state: RWKV5State) -> tuple[Tensor, RWKV5State]:
        """One token: x (B, C). One lerp gives every projection's input."""
        B, C = x.shape
        H, N = self.n_head, self.head_size
        c = self.constants()
        mixed = torch.lerp(state.att_x_prev.to(x.dtype), x, c.mix)  # (3 or 4, B, C): k, v, r (, g)
        k = self.key(mixed[0]).float().view(B, H, N)
        v = self.value(mixed[1]).float().view(B, H, N)
        r = self.receptance(mixed[2]).float().view(B, H, N)
        y, wkv = wkv5(r, c.log_w, k, v, c.bonus, state.wkv)  # (B, H, N)
        out = self._mix_output(y.view(B, H * N), mixed[3] if self.gated else None, x.dtype)
        return out, dataclasses.replace(state, att_x_prev=x.float(), wkv=wkv)


class RWKV5(RWKV4):
    """The whole model: RWKV-4's layer loop (models/rwkv4.py) with RWKV-5's time mixing and state.

    ``logits, state = model(tokens, state)`` for any number of tokens, ``model.step(tokens, state)``
    for one token per sequence. RWKV-6 (models/rwkv6.py) reuses it again.
    """

    time_mix: ClassVar[type[nn.Module]] = TimeMix
    channel_mix: ClassVar[type[nn.Module]] = ChannelMix
    state_cls: ClassVar[type[RecurrentState]] = RWKV5State
