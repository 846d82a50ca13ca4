"""RWKV-7 "Goose": the generalised delta rule (Peng et al. 2025), as in the World and G1 models.

Read top to bottom: config, state, the two mixing layers, a block, the model. Parameter names and
shapes are BlinkDL's (``att.x_r``, ``att.w0``, ``att.w1``, ``att.r_k``, ...), so a BlinkDL state
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
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.wkv7 import wkv7
from ..state import RecurrentState
from .common import as_token_batch, check_state_shapes, token_shift, zeros

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
        if self.n_embd % self.head_size:
            raise ValueError(f"n_embd={self.n_embd} is not a multiple of head_size={self.head_size}")

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], **overrides: Any) -> RWKV7Config:
        """Read the shapes off a BlinkDL-named state dict."""
        vocab_size, n_embd = sd["emb.weight"].shape
        n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
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
    def zeros(cls, config: RWKV7Config, batch: int, device: torch.device | str = "cpu") -> RWKV7State:
        L, C, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
        return cls(
            zeros((L, batch, C), device), zeros((L, batch, H, N, N), device), zeros((L, batch, C), device)
        )


def lora(x: Tensor, down: Tensor, up: Tensor, inner: Any = None) -> Tensor:
    """A low-rank projection ``inner(x @ down) @ up``; down (C, D), up (D, C)."""
    h = x @ down
    return (h if inner is None else inner(h)) @ up


class TimeMix(nn.Module):
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

    def forward(
        self, x: Tensor, x_prev: Tensor, v_first: Tensor | None, wkv_state: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, T, C) normalised input; x_prev: (B, C); v_first: (B, T, C) from layer 0 (None in
        layer 0); wkv_state: (B, H, N, N). Returns the output, v_first, and the new WKV state."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        delta = token_shift(x, x_prev) - x
        xr, xw, xk = x + delta * self.x_r, x + delta * self.x_w, x + delta * self.x_k
        xv, xa, xg = x + delta * self.x_v, x + delta * self.x_a, x + delta * self.x_g

        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        w = self.w0 + lora(xw, self.w1, self.w2, torch.tanh)
        a = torch.sigmoid(self.a0 + lora(xa, self.a1, self.a2))  # in-context learning rate, (0, 1)
        g = lora(xg, self.g1, self.g2, torch.sigmoid)

        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0).view(B, T, C)
        k = k * (1 + (a - 1) * self.k_a)
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + lora(xv, self.v1, self.v2))
        log_w = -MAX_LOG_DECAY_RATE * torch.sigmoid(w.float())  # (B, T, C), in (-0.61, 0)

        heads = [t.float().view(B, T, H, N) for t in (r, log_w, k, v, -kk, kk * a)]
        y, wkv_state = wkv7(*heads, wkv_state, self.chunk_len)  # (B, T, H, N)
        y = F.group_norm(
            y.reshape(B * T, C), H, self.ln_x.weight.float(), self.ln_x.bias.float(), self.ln_x_eps
        )
        y = y.view(B, T, C).to(x.dtype)
        # The current token's own contribution, weighted per channel by r_k.
        bonus = (r * k * self.r_k.view(C)).view(B, T, H, N).sum(dim=-1, keepdim=True) * v.view(B, T, H, N)
        y = y + bonus.view(B, T, C)
        return self.output(y * g), v_first, wkv_state


class ChannelMix(nn.Module):
    """Channel mixing ("ffn"): a squared-ReLU MLP on the token-shifted input, no receptance gate."""

    def __init__(self, config: RWKV7Config) -> None:
        super().__init__()
        C, Fd = config.n_embd, config.ffn_dim
        self.x_k = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, Fd, bias=False)
        self.value = nn.Linear(Fd, C, bias=False)

    def forward(self, x: Tensor, x_prev: Tensor) -> Tensor:
        # x: (B, T, C); x_prev: (B, C)
        xk = x + (token_shift(x, x_prev) - x) * self.x_k
        return self.value(torch.square(torch.relu(self.key(xk))))  # (B, T, C) through (B, T, F)


class Block(nn.Module):
    def __init__(self, config: RWKV7Config, layer_id: int) -> None:
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_eps
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C, eps=eps)  # normalises the embeddings, block 0 only
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.att = TimeMix(config, layer_id)
        self.ffn = ChannelMix(config)


class RWKV7(nn.Module):
    """The whole model: ``logits, state = model(tokens, state)`` for any number of tokens."""

    def __init__(self, config: RWKV7Config) -> None:
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def initial_state(self, batch: int = 1) -> RWKV7State:
        return RWKV7State.zeros(self.config, batch, self.emb.weight.device)

    def forward(
        self, tokens: Tensor | list[int], state: RWKV7State | None = None
    ) -> tuple[Tensor, RWKV7State]:
        """tokens: (B, T) ids (a 1-D tensor or list means B = 1). Returns (B, T, V) float32 logits
        and the state after the last token; the given state is left untouched."""
        tokens = as_token_batch(tokens, self.emb.weight.device)
        B = tokens.shape[0]
        if state is None:
            state = self.initial_state(B)
        check_state_shapes(state, RWKV7State.zeros(self.config, B, "meta"))
        dtype = self.emb.weight.dtype
        x = self.emb(tokens)  # (B, T, C)
        v_first: Tensor | None = None
        att_prev, wkv, ffn_prev = [], [], []
        for i, block in enumerate(self.blocks):
            if i == 0:
                x = block.ln0(x)
            h = block.ln1(x)
            att_out, v_first, s = block.att(h, state.att_x_prev[i].to(dtype), v_first, state.wkv[i])
            att_prev.append(h[:, -1].float())
            wkv.append(s)
            x = x + att_out
            h = block.ln2(x)
            x = x + block.ffn(h, state.ffn_x_prev[i].to(dtype))
            ffn_prev.append(h[:, -1].float())
        logits = self.head(self.ln_out(x)).float()
        return logits, RWKV7State(torch.stack(att_prev), torch.stack(wkv), torch.stack(ffn_prev))


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
