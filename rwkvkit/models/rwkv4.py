"""RWKV-4, the architecture of the paper (Peng et al. 2023) and of the Pile and Raven models.

Read top to bottom: config, state, the two mixing layers, a block, the model. Parameter names
and shapes are BlinkDL's, so a BlinkDL state dict loads as it is.

Shapes: B batch, T tokens, C = n_embd, F = ffn_dim, V = vocab_size, L = n_layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..ops.wkv4 import EMPTY_MAX, wkv4
from ..state import RecurrentState
from .common import as_token_batch, token_shift


@dataclasses.dataclass(frozen=True)
class RWKV4Config:
    vocab_size: int  # 50277 for the Pile models (20B tokenizer), 65536 for World, 256 for bytes
    n_layer: int
    n_embd: int
    ffn_dim: int  # channel-mixing width; 4 * n_embd in the official models, free here
    layer_norm_eps: float = 1e-5  # what BlinkDL, transformers and rwkv.cpp all use for v4
    # Tokens per chunk in the parallel WKV; a speed knob, not a numerics one. On the CPU a 169M
    # prefill of 512 tokens (matmul form, ops/wkv4_train.py) ran fastest at 16, ~1.2x 8 and 32;
    # the row-max fallback alone is fastest at 8 (benchmarks/wkv_chunk_len.py [--whole-model]).
    chunk_len: int = 16

    version: ClassVar[str] = "4"

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], **overrides: Any) -> RWKV4Config:
        """Read the shapes off a BlinkDL-named state dict."""
        vocab_size, n_embd = sd["emb.weight"].shape
        n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
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
    def zeros(cls, config: RWKV4Config, batch: int, device: torch.device | str = "cpu") -> RWKV4State:
        shape = (config.n_layer, batch, config.n_embd)
        z = torch.zeros(shape, dtype=torch.float32, device=device)
        return cls(z, z.clone(), z.clone(), torch.full_like(z, EMPTY_MAX), z.clone())


class TimeMix(nn.Module):
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

    def forward(
        self, x: Tensor, x_prev: Tensor, wkv_state: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        # x: (B, T, C) normalised input; x_prev: (B, C)
        shifted = token_shift(x, x_prev)
        xk = torch.lerp(shifted, x, self.time_mix_k)  # mix * x + (1 - mix) * shifted
        xv = torch.lerp(shifted, x, self.time_mix_v)
        xr = torch.lerp(shifted, x, self.time_mix_r)
        r = torch.sigmoid(self.receptance(xr))
        k = self.key(xk).float()
        v = self.value(xv).float()
        w = -torch.exp(self.time_decay.float())
        out, wkv_state = wkv4(w, self.time_first.float(), k, v, wkv_state, self.chunk_len)
        return self.output(r * out.to(r.dtype)), wkv_state


class ChannelMix(nn.Module):
    """Channel mixing ("ffn"): a receptance-gated squared-ReLU MLP."""

    def __init__(self, config: RWKV4Config) -> None:
        super().__init__()
        C, Fd = config.n_embd, config.ffn_dim
        self.time_mix_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, Fd, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(Fd, C, bias=False)

    def forward(self, x: Tensor, x_prev: Tensor) -> Tensor:
        # x: (B, T, C); x_prev: (B, C)
        shifted = token_shift(x, x_prev)
        xk = torch.lerp(shifted, x, self.time_mix_k)
        xr = torch.lerp(shifted, x, self.time_mix_r)
        hidden = torch.square(torch.relu(self.key(xk)))  # (B, T, F)
        return torch.sigmoid(self.receptance(xr)) * self.value(hidden)


class Block(nn.Module):
    def __init__(self, config: RWKV4Config, layer_id: int) -> None:
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_eps
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C, eps=eps)  # normalises the embeddings, block 0 only
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.att = TimeMix(config)
        self.ffn = ChannelMix(config)


class RWKV4(nn.Module):
    """The whole model: ``logits, state = model(tokens, state)`` for any number of tokens."""

    def __init__(self, config: RWKV4Config) -> None:
        super().__init__()
        self.config = config
        # Weights come from a checkpoint or an init function, so nn.Embedding's own random init is
        # skipped: on the meta device it would import torch's compiler stack (~4 s per process).
        self.emb = nn.Embedding(
            config.vocab_size, config.n_embd, _weight=torch.empty(config.vocab_size, config.n_embd)
        )
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Set by rwkvkit.inference.optimize_for_inference (load_model does): T = 1 then takes the
        # lean recurrent step there; this class's forward stays the reference it is tested against.
        self.fast_decode = False
        self.decode_constants = None

    def initial_state(self, batch: int = 1) -> RWKV4State:
        return RWKV4State.zeros(self.config, batch, self.emb.weight.device)

    def forward(
        self, tokens: Tensor | list[int], state: RWKV4State | None = None, *, last_only: bool = False
    ) -> tuple[Tensor, RWKV4State]:
        """tokens: (B, T) ids (a 1-D tensor or list means B = 1). Returns (B, T, V) float32 logits
        and the state after the last token; the given state is left untouched.

        ``last_only=True`` returns the last position's logits only, (B, 1, V): prompt prefill needs
        no others, and the head is a large share of a small model's work (a third at 169M)."""
        tokens = as_token_batch(tokens, self.emb.weight.device)
        B = tokens.shape[0]
        if state is None:
            state = self.initial_state(B)
        check_state(state, RWKV4State, self.config.n_layer, B, self.config.n_embd)
        if self.fast_decode and tokens.shape[1] == 1:
            from ..inference import rwkv4_decode_step

            return rwkv4_decode_step(self, tokens[:, 0], state)
        dtype = self.emb.weight.dtype
        x = self.emb(tokens)  # (B, T, C)
        new = {name: [] for name in state.tensors()}
        for i, block in enumerate(self.blocks):
            if i == 0:
                x = block.ln0(x)
            h = block.ln1(x)
            att_prev = state.att_x_prev[i].to(dtype)
            wkv_in = (state.wkv_num[i], state.wkv_den[i], state.wkv_max[i])
            att_out, (num, den, mx) = block.att(h, att_prev, wkv_in)
            new["att_x_prev"].append(h[:, -1].float())
            new["wkv_num"].append(num)
            new["wkv_den"].append(den)
            new["wkv_max"].append(mx)
            x = x + att_out
            h = block.ln2(x)
            x = x + block.ffn(h, state.ffn_x_prev[i].to(dtype))
            new["ffn_x_prev"].append(h[:, -1].float())
        if last_only:
            x = x[:, -1:]
        logits = self.head(self.ln_out(x)).float()
        return logits, RWKV4State(**{name: torch.stack(ts) for name, ts in new.items()})


def check_state(
    state: RecurrentState, cls: type[RecurrentState], n_layer: int, batch: int, width: int
) -> None:
    """Refuse a state from another model or batch with a message, not a shape error deep inside."""
    from ..errors import StateError

    if not isinstance(state, cls):
        raise StateError(
            f"expected an {cls.__name__} for this RWKV-{cls.version} model, got {type(state).__name__}"
        )
    for name, t in state.tensors().items():
        if t.shape[0] != n_layer or t.shape[1] != batch or t.shape[-1] != width:
            raise StateError(
                f"state field {name} has shape {tuple(t.shape)}, but this model needs "
                f"(n_layer={n_layer}, batch={batch}, ..., {width})"
            )
