"""RWKV-5 "Eagle" (5.0, 5.1, 5.2): multi-head linear attention with a matrix-valued state.

Read top to bottom: config, state, the two mixing layers, a block, the model. Parameter names and
shapes are BlinkDL's, so a BlinkDL state dict loads as it is.

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
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.wkv5 import wkv5
from ..state import RecurrentState
from .common import as_token_batch, check_state_shapes, token_shift, zeros
from .rwkv4 import ChannelMix  # channel mixing ("ffn") is RWKV-4's, unchanged


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
        if self.att_width % self.head_size:
            raise ValueError(f"dim_att={self.att_width} is not a multiple of head_size={self.head_size}")

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], **overrides: Any) -> RWKV5Config:
        """Read the shapes and the sub-version's parameters off a BlinkDL-named state dict."""
        vocab_size, n_embd = sd["emb.weight"].shape
        n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
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
    def zeros(cls, config: Any, batch: int, device: torch.device | str = "cpu") -> RWKV5State:
        L, C, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
        return cls(
            zeros((L, batch, C), device), zeros((L, batch, H, N, N), device), zeros((L, batch, C), device)
        )


class TimeMix(nn.Module):
    """Time mixing ("att"): multi-head WKV with static decay, GroupNorm, optional SiLU gate."""

    def __init__(self, config: RWKV5Config) -> None:
        super().__init__()
        C, A, H, N = config.n_embd, config.att_width, config.n_head, config.head_size
        self.n_head, self.head_size, self.chunk_len = H, N, config.chunk_len
        self.ln_x_eps, self.log_bonus = config.ln_x_eps, config.log_bonus
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

    def bonus(self) -> Tensor:
        """u, broadcast to (H, N)."""
        u = self.time_first.float().exp() if self.log_bonus else self.time_faaaa.float()
        return u.reshape(self.n_head, -1).expand(self.n_head, self.head_size)

    def forward(self, x: Tensor, x_prev: Tensor, wkv_state: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, T, C) normalised input; x_prev: (B, C); wkv_state: (B, H, N, N)."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        shifted = token_shift(x, x_prev)
        r = self.receptance(torch.lerp(shifted, x, self.time_mix_r))
        k = self.key(torch.lerp(shifted, x, self.time_mix_k))
        v = self.value(torch.lerp(shifted, x, self.time_mix_v))
        log_w = -torch.exp(self.time_decay.float()).reshape(H, -1).expand(H, N)  # (H, N)
        heads = [t.float().view(B, T, H, N) for t in (r, k, v)]
        y, wkv_state = wkv5(
            heads[0], log_w.expand(B, T, H, N), heads[1], heads[2], self.bonus(), wkv_state, self.chunk_len
        )
        y = F.group_norm(
            y.reshape(B * T, H * N), H, self.ln_x.weight.float(), self.ln_x.bias.float(), self.ln_x_eps
        )
        y = y.view(B, T, H * N).to(x.dtype)
        if hasattr(self, "gate"):
            y = y * F.silu(self.gate(torch.lerp(shifted, x, self.time_mix_g)))
        return self.output(y), wkv_state


class Block(nn.Module):
    def __init__(
        self, config: Any, layer_id: int, time_mix: type[nn.Module], channel_mix: type[nn.Module]
    ) -> None:
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_eps
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C, eps=eps)  # normalises the embeddings, block 0 only
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.att = time_mix(config)
        self.ffn = channel_mix(config)


class RWKV5(nn.Module):
    """The whole model: ``logits, state = model(tokens, state)`` for any number of tokens.

    RWKV-6 (models/rwkv6.py) reuses this class with its own mixing layers and state type.
    """

    time_mix: ClassVar[type[nn.Module]] = TimeMix
    channel_mix: ClassVar[type[nn.Module]] = ChannelMix
    state_cls: ClassVar[type[RWKV5State]] = RWKV5State

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(
            Block(config, i, self.time_mix, self.channel_mix) for i in range(config.n_layer)
        )
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def initial_state(self, batch: int = 1) -> RWKV5State:
        return self.state_cls.zeros(self.config, batch, self.emb.weight.device)

    def forward(
        self, tokens: Tensor | list[int], state: RWKV5State | None = None
    ) -> tuple[Tensor, RWKV5State]:
        """tokens: (B, T) ids (a 1-D tensor or list means B = 1). Returns (B, T, V) float32 logits
        and the state after the last token; the given state is left untouched."""
        tokens = as_token_batch(tokens, self.emb.weight.device)
        B = tokens.shape[0]
        if state is None:
            state = self.initial_state(B)
        check_state_shapes(state, self.state_cls.zeros(self.config, B, "meta"))
        dtype = self.emb.weight.dtype
        x = self.emb(tokens)  # (B, T, C)
        att_prev, wkv, ffn_prev = [], [], []
        for i, block in enumerate(self.blocks):
            if i == 0:
                x = block.ln0(x)
            h = block.ln1(x)
            att_out, s = block.att(h, state.att_x_prev[i].to(dtype), state.wkv[i])
            att_prev.append(h[:, -1].float())
            wkv.append(s)
            x = x + att_out
            h = block.ln2(x)
            x = x + block.ffn(h, state.ffn_x_prev[i].to(dtype))
            ffn_prev.append(h[:, -1].float())
        logits = self.head(self.ln_out(x)).float()
        return logits, self.state_cls(torch.stack(att_prev), torch.stack(wkv), torch.stack(ffn_prev))
