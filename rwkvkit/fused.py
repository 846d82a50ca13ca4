"""RWKV-7's one-token step in one native call: ``rwkv7_step`` of rwkvkit/csrc/cpu_kernels.cpp.

Why: the model's own ``step`` (models/rwkv7.py) is ~240 PyTorch operator calls per layer around
its seven products. On the project's 2-core Xeon they cost ~10 ms a token for the 0.1B shape
(``benchmarks/profile_step.py``), against ~37 ms for the products themselves at one thread and
~24 ms at two, and while Python works between two products the kernels' helper thread goes to
sleep. The native step runs the same arithmetic as loops over C floats between products that
follow each other directly, on the weights exactly as the inference layers store them (float32,
bfloat16, float16, packed int8 or int4: ``ops/linear.py``).

What it computes: :meth:`RWKV7.step`'s result, with activations in float32 throughout (the PyTorch
step rounds them to a 16-bit model's dtype after every operation; here only the inputs of 16-bit
products are): float32 models agree to 1e-5 (tests/test_fused.py).

When it runs (:func:`install`, which ``optimize_for_inference`` calls): on the CPU with the native
kernels loaded, every product in a native layout, the step's constants prepared (so not after
``train()``), no gradient wanted and at most ``NATIVE_MAX_ROWS`` sequences; otherwise the model's
own step runs. It packs the weights' tensor list once and again whenever a module or the prepared
constants were replaced (a move, a load, a swap of layers), never copying a large weight.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from .models.common import as_token_column
from .models.rwkv7 import RWKV7
from .ops import native
from .ops.linear import NATIVE_MAX_ROWS, FastLinear, Int4Linear, Int8Linear

_EMPTY = torch.empty(0)


def _vector(t: Tensor | None) -> Tensor:
    return _EMPTY if t is None else t.detach().float().contiguous().view(-1)


def _product(layer: nn.Module) -> tuple[Tensor, Tensor] | None:
    """A linear layer's (weight, scales) as the native products read them, or None if they cannot."""
    if isinstance(layer, FastLinear) and layer.native and layer.bias is None and layer.weight.is_contiguous():
        return layer.weight.detach(), _EMPTY
    if isinstance(layer, Int8Linear) and layer.kernel == "native":
        return layer.qweight, layer.weight_scale
    if isinstance(layer, Int4Linear) and layer.kernel == "native":
        return layer.qweight, layer.scale_min
    return None


def _layer_norm(ln: nn.LayerNorm) -> list[Tensor]:
    return [_vector(ln.weight), _vector(ln.bias)]


class FusedStep:
    """``model.step`` (same signature and results) through the native ``rwkv7_step`` when it can run."""

    def __init__(self, model: RWKV7) -> None:
        self.model = model
        self._seen: list[Any] = []  # what the packed list was made from, compared by identity
        self._params: list[Tensor] | None = None

    def _sources(self) -> list[Any]:
        m = self.model
        out: list[Any] = [m.ln_out, m.head]
        for block in m.blocks:
            att, ffn = block.att, block.ffn
            out += [block.ln1, block.ln2, att._prepared, ffn._prepared, att.ln_x]
            out += [att.receptance, att.key, att.value, att.output, ffn.key, ffn.value]
        return out

    def _pack(self) -> list[Tensor] | None:
        sources = self._sources()
        if len(sources) == len(self._seen) and all(a is b for a, b in zip(sources, self._seen, strict=True)):
            return self._params
        self._seen, self._params = sources, self._make()
        return self._params

    def _make(self) -> list[Tensor] | None:
        m = self.model
        head = _product(m.head)
        first = m.blocks[0]
        if (
            head is None
            or m.config.head_size % 16
            or not all(b.att.prepared and b.ffn.prepared for b in m.blocks)
        ):
            return None  # the WKV loops take heads in steps of 16 channels
        ln0 = _layer_norm(first.ln0) if first.normalises_embedding else [_EMPTY, _EMPTY]
        params = [*ln0, *_layer_norm(m.ln_out), *head]
        for block in m.blocks:
            att, ffn = block.att, block.ffn
            c, fc = att.constants(), ffn.constants()
            products = [
                _product(x) for x in (att.receptance, att.key, att.value, att.output, ffn.key, ffn.value)
            ]
            if any(p is None for p in products):
                return None
            (rw, rp), (kw, kp), (vw, vp), (ow, op), (fkw, fkp), (fvw, fvp) = products  # type: ignore[misc]
            lowrank = [_EMPTY if t is None else t for t in (c.w1, c.w2, c.a1, c.a2, c.v1, c.v2, c.g1, c.g2)]
            params += [*_layer_norm(block.ln1), *_layer_norm(block.ln2), _vector(c.mix)]
            params += [_vector(t) for t in (c.w0, c.a0, c.v0, c.k_k, c.k_a, c.r_k)]
            params += [*lowrank, rw, rp, kw, kp, vw, vp, ow, op]
            params += [_vector(att.ln_x.weight), _vector(att.ln_x.bias), _vector(fc.x_k), fkw, fkp, fvw, fvp]
        return params

    def runs_native(self, batch: int) -> bool:
        """Whether a step of ``batch`` sequences would take the native path now."""
        m = self.model
        if native.ops() is None or batch > NATIVE_MAX_ROWS or m.emb.weight.device.type != "cpu":
            return False
        if torch.is_grad_enabled() and any(p.requires_grad for p in m.parameters()):
            return False
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return False  # exporters and compilers record the model's own operations
        return self._pack() is not None

    def __call__(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        m = self.model
        if not self.runs_native(tokens.shape[0]):
            return RWKV7.step(m, tokens, state)
        tokens = as_token_column(tokens, m.config.vocab_size)
        state = m._checked(state, tokens.shape[0])
        if any(t.dtype != torch.float32 for t in (state.att_x_prev, state.wkv, state.ffn_x_prev)):
            return RWKV7.step(m, tokens, state)
        att, wkv, ffn = (t.contiguous() for t in (state.att_x_prev, state.wkv, state.ffn_x_prev))
        new = {
            "att_x_prev": torch.empty_like(att),
            "wkv": torch.empty_like(wkv),
            "ffn_x_prev": torch.empty_like(ffn),
        }
        cfg = m.config
        logits = native.ops().rwkv7_step(
            m.emb.weight[tokens].float(), self._params, att, wkv, ffn, new["att_x_prev"], new["wkv"],
            new["ffn_x_prev"], cfg.n_head, cfg.ffn_dim, cfg.vocab_size, cfg.layer_norm_eps, cfg.ln_x_eps,
        )  # fmt: skip
        return logits, dataclasses.replace(state, **new)


def install(model: nn.Module) -> bool:
    """Give an RWKV-7 model the fused step (``model.step``, so one-token calls too); returns whether
    it did. Other versions keep their own step."""
    if not isinstance(model, RWKV7):
        return False
    model.step = FusedStep(model)  # type: ignore[method-assign]
    return True
