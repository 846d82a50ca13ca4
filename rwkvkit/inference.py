"""Making a loaded model fast for inference on the CPU, without changing what it computes.

:func:`optimize_for_inference` is what :func:`rwkvkit.load_model` applies: it swaps the linear
layers for :class:`~rwkvkit.ops.linear.FastLinear` (or :class:`~rwkvkit.ops.linear.Int8Linear`
with ``quantize="int8"``) and turns on the lean one-token path below. The plain modules and the
model's general ``forward`` remain the reference; tests/test_fast_inference.py compares the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import RwkvkitError
from .ops.linear import FastLinear, Int8Linear
from .ops.wkv4 import wkv4_step

QUANTIZE_MODES = ("int8",)


def optimize_for_inference(model: nn.Module, *, quantize: str | None = None) -> nn.Module:
    """Swap in the fast linear layers (in place) and enable the lean decode path; returns ``model``.

    ``quantize="int8"``: weight-only int8 for every matrix except the embedding (a lookup, not a
    product); the embedding, layer norms and mixing vectors keep the model's dtype.
    """
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise RwkvkitError(f"unknown quantize={quantize!r}; choose one of {QUANTIZE_MODES} or None")
    from .quantize import swap_linear_layers

    swap_linear_layers(model, Int8Linear.from_linear if quantize == "int8" else FastLinear.from_linear)
    _release_file_mappings(model)
    if hasattr(model, "fast_decode"):
        model.fast_decode = True
        model.decode_constants = None  # recomputed from the current parameters on the next step
    model.quantization = quantize  # type: ignore[assignment]
    return model


def _release_file_mappings(model: nn.Module) -> None:
    """Copy every tensor the swap did not create, so none still points into the checkpoint file.

    load_model memory-maps the file; the fast layers copy the matrices (a new layout, int8), and as
    long as any tensor (the embedding, a layer norm) still views the mapping, every page of the
    file read so far stays resident beside the copies: 1.45 GB instead of 0.95 GB for the 169M
    shape in fp32. Copying the rest (one tensor at a time) lets the mapping go.
    """
    fresh: set[int] = set()
    for module in model.modules():
        if isinstance(module, Int8Linear) or (
            isinstance(module, FastLinear) and not module.weight.is_contiguous()
        ):
            fresh.update(id(t) for t in module.parameters(recurse=False))
            fresh.update(id(t) for t in module.buffers(recurse=False))
    with torch.no_grad():
        for module in model.modules():
            for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if id(t) not in fresh and t.device.type == "cpu":
                    t.data = t.data.clone()


@dataclass
class RWKV4DecodeConstants:
    """What the one-token step would otherwise recompute every token, per layer."""

    att_mix: list[Tensor]  # (3, 1, C) time_mix_k, _v, _r stacked: one lerp gives xk, xv, xr
    ffn_mix: list[Tensor]  # (2, 1, C) time_mix_k, _r
    decay: list[Tensor]  # (C,) float32 w = -exp(time_decay)
    first: list[Tensor]  # (C,) float32 u = time_first
    key: tuple[object, ...]  # which parameters they came from; stale once any was changed or moved


def _constants_key(model: nn.Module) -> tuple[object, ...]:
    params = [
        p
        for block in model.blocks
        for m in (block.att, block.ffn)
        for n, p in m.named_parameters(recurse=False)
    ]
    return tuple((p.data_ptr(), p._version, p.dtype) for p in params)


def rwkv4_decode_constants(model: nn.Module) -> RWKV4DecodeConstants:
    with torch.no_grad():
        att_mix, ffn_mix, decay, first = [], [], [], []
        for block in model.blocks:
            a, f = block.att, block.ffn
            att_mix.append(torch.stack([a.time_mix_k, a.time_mix_v, a.time_mix_r]).reshape(3, 1, -1))
            ffn_mix.append(torch.stack([f.time_mix_k, f.time_mix_r]).reshape(2, 1, -1))
            decay.append(-torch.exp(a.time_decay.float()))
            first.append(a.time_first.float())
    return RWKV4DecodeConstants(att_mix, ffn_mix, decay, first, _constants_key(model))


def _layer_norm(x: Tensor, ln: nn.LayerNorm) -> Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def rwkv4_decode_step(model: nn.Module, token: Tensor, state: object) -> tuple[Tensor, object]:
    """One token for every sequence in the batch: the recurrent mode with no time axis.

    token: (B,) ids; state: an RWKV4State for batch B. Returns (B, 1, V) float32 logits and the new
    state (the given one is not changed). Computes what ``RWKV4.forward`` computes for T = 1, with
    fewer operations: no token-shift concatenation, one lerp for the three time-mix inputs, the
    decay exponentials computed once per model instead of once per token.
    """
    from .models.rwkv4 import RWKV4State

    const = model.decode_constants
    if const is None or const.key != _constants_key(model):
        const = model.decode_constants = rwkv4_decode_constants(model)
    dtype = model.emb.weight.dtype
    x = model.emb(token)  # (B, C)
    att_prev = state.att_x_prev.to(dtype)  # (L, B, C), once for all layers
    ffn_prev = state.ffn_x_prev.to(dtype)
    new_att_prev, new_ffn_prev, nums, dens, maxes = [], [], [], [], []
    for i, block in enumerate(model.blocks):
        if i == 0:
            x = _layer_norm(x, block.ln0)
        att, ffn = block.att, block.ffn
        # Time mixing.
        h = _layer_norm(x, block.ln1)  # (B, C)
        xk, xv, xr = torch.lerp(att_prev[i], h, const.att_mix[i])  # 3 x (B, C)
        r = torch.sigmoid(att.receptance(xr))
        k = att.key(xk).float()
        v = att.value(xv).float()
        wkv, (num, den, mx) = wkv4_step(
            const.decay[i], const.first[i], k, v, (state.wkv_num[i], state.wkv_den[i], state.wkv_max[i])
        )
        x = x + att.output(r * wkv.to(r.dtype))
        new_att_prev.append(h)
        nums.append(num)
        dens.append(den)
        maxes.append(mx)
        # Channel mixing.
        h = _layer_norm(x, block.ln2)
        xk, xr = torch.lerp(ffn_prev[i], h, const.ffn_mix[i])  # 2 x (B, C)
        hidden = torch.square(torch.relu(ffn.key(xk)))  # (B, F)
        x = x + torch.sigmoid(ffn.receptance(xr)) * ffn.value(hidden)
        new_ffn_prev.append(h)
    logits = model.head(_layer_norm(x, model.ln_out)).float()[:, None]  # (B, 1, V)
    new_state = RWKV4State(
        att_x_prev=torch.stack(new_att_prev).float(),
        wkv_num=torch.stack(nums),
        wkv_den=torch.stack(dens),
        wkv_max=torch.stack(maxes),
        ffn_x_prev=torch.stack(new_ffn_prev).float(),
    )
    return logits, new_state
