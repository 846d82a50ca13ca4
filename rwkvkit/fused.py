"""The one-token step of RWKV-4, 5, 6 and 7 in one native call (``rwkv4_step``, ``rwkv56_step``,
``rwkv7_step`` in rwkvkit/csrc/cpu_kernels.cpp).

Why: the model's own ``step`` (models/rwkv7.py) is ~240 PyTorch operator calls per layer around
its seven products. On the project's 2-core Xeon they cost ~10 ms a token for the RWKV-7 0.1B
shape (``benchmarks/profile_step.py``), against ~37 ms for the products themselves at one thread
and ~24 ms at two, and while Python works between two products the kernels' helper thread goes to
sleep. The native step runs the same arithmetic as loops over C floats between products that
follow each other directly, on the weights exactly as the inference layers store them (float32,
bfloat16, float16, packed int8 or int4: ``ops/linear.py``). Measured (BENCHMARKS.md): RWKV-7 0.1B
fp32 decode 20 -> 24 tokens/s at one thread, 28 -> 41 at two; int8 28 -> 77 at one thread.

What it computes: the model's own step's result, with activations in float32 throughout (the PyTorch
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
import operator
from typing import Any

import torch
from torch import Tensor, nn

from .models.common import as_token_column
from .models.rwkv4 import RWKV4
from .models.rwkv5 import RWKV5
from .models.rwkv6 import RWKV6
from .models.rwkv6 import TimeMix as RWKV6TimeMix
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
    """``model.step`` (same signature and results) through one native call when it can run; the
    subclasses say what the call takes for their version."""

    model_cls: type[nn.Module]
    loop_width = "head_size"  # the config field the native WKV loops take in steps of 16 channels

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._seen: list[Any] = []  # what the packed list was made from, compared by identity
        self._params: list[Tensor] | None = None

    def _sources(self) -> list[Any]:
        """Every module and prepared-constants object the packed list is made from. Read from the
        modules' own dicts: it runs every step, and nn.Module's attribute lookup made it ~25 us of
        the bundled model's ~900 us step (now ~2 us)."""
        modules = self.model._modules
        out: list[Any] = [modules["ln_out"], modules["head"]]
        for block in modules["blocks"]._modules.values():
            parts = block._modules
            att, ffn = parts["att"], parts["ffn"]
            out += (parts["ln1"], parts["ln2"], att._prepared, ffn._prepared)
            out += (*att._modules.values(), *ffn._modules.values())
        return out

    def _pack(self) -> list[Tensor] | None:
        sources = self._sources()
        if len(sources) != len(self._seen) or not all(map(operator.is_, sources, self._seen)):
            self._seen, self._params = sources, self._make()
        return self._params

    def _make(self) -> list[Tensor] | None:
        """The head's tensors then every layer's, in the order of the native op; None if it cannot run."""
        m = self.model
        head = _product(m.head)
        if getattr(m.config, self.loop_width) % 16 or head is None:
            return None
        if not all(b.att.prepared and b.ffn.prepared for b in m.blocks):
            return None
        first = m.blocks[0]
        ln0 = _layer_norm(first.ln0) if first.normalises_embedding else [_EMPTY, _EMPTY]
        params = [*ln0, *_layer_norm(m.ln_out), *head]
        for block in m.blocks:
            layer = self._layer(block)
            if layer is None:
                return None
            params += [*_layer_norm(block.ln1), *_layer_norm(block.ln2), *layer]
        return params

    def _layer(self, block: nn.Module) -> list[Tensor] | None:
        raise NotImplementedError

    def _native(self, x: Tensor, state: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits (B, V) and the new state's tensors from embeddings x (B, C) float32."""
        old = {name: t.contiguous() for name, t in state.tensors().items()}
        new = {name: torch.empty_like(t) for name, t in old.items()}
        return self._call(x, old, new), new

    def _call(self, x: Tensor, old: dict[str, Tensor], new: dict[str, Tensor]) -> Tensor:
        """The native op: reads the state ``old``, writes ``new`` (both by field name), returns logits."""
        raise NotImplementedError

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
        own_step = self.model_cls.step
        if not self.runs_native(tokens.shape[0]):
            return own_step(m, tokens, state)
        tokens = as_token_column(tokens, m.config.vocab_size)
        state = m._checked(state, tokens.shape[0])
        if any(t.dtype != torch.float32 for t in state.tensors().values()):
            return own_step(m, tokens, state)
        logits, new = self._native(m.emb.weight[tokens].float(), state)
        return logits, dataclasses.replace(state, **new)


class RWKV7Step(FusedStep):
    model_cls = RWKV7

    def _layer(self, block: nn.Module) -> list[Tensor] | None:
        att, ffn = block.att, block.ffn
        c, fc = att.constants(), ffn.constants()
        products = [_product(x) for x in (att.receptance, att.key, att.value, att.output, ffn.key, ffn.value)]
        if any(p is None for p in products):
            return None
        (rw, rp), (kw, kp), (vw, vp), (ow, op), (fkw, fkp), (fvw, fvp) = products  # type: ignore[misc]
        lowrank = [_EMPTY if t is None else t for t in (c.w1, c.w2, c.a1, c.a2, c.v1, c.v2, c.g1, c.g2)]
        return [
            _vector(c.mix), *(_vector(t) for t in (c.w0, c.a0, c.v0, c.k_k, c.k_a, c.r_k)),
            *lowrank, rw, rp, kw, kp, vw, vp, ow, op,
            _vector(att.ln_x.weight), _vector(att.ln_x.bias), _vector(fc.x_k), fkw, fkp, fvw, fvp,
        ]  # fmt: skip

    def _call(self, x: Tensor, old: dict[str, Tensor], new: dict[str, Tensor]) -> Tensor:
        cfg = self.model.config
        return native.ops().rwkv7_step(
            x, self._params, old["att_x_prev"], old["wkv"], old["ffn_x_prev"], new["att_x_prev"], new["wkv"],
            new["ffn_x_prev"], cfg.n_head, cfg.ffn_dim, cfg.vocab_size, cfg.layer_norm_eps, cfg.ln_x_eps,
        )  # fmt: skip


class RWKV4Step(FusedStep):
    model_cls = RWKV4
    order = ("att_x_prev", "wkv_num", "wkv_den", "wkv_max", "ffn_x_prev")
    loop_width = "n_embd"  # RWKV-4's WKV is per channel

    def _layer(self, block: nn.Module) -> list[Tensor] | None:
        att, ffn = block.att, block.ffn
        c, fc = att.constants(), ffn.constants()
        layers = (att.key, att.value, att.receptance, att.output, ffn.key, ffn.receptance, ffn.value)
        products = [_product(x) for x in layers]
        if any(p is None for p in products):
            return None
        (kw, kp), (vw, vp), (rw, rp), (ow, op), (fkw, fkp), (frw, frp), (fvw, fvp) = products  # type: ignore[misc]
        return [
            _vector(c.mix), _vector(c.decay), _vector(c.first), kw, kp, vw, vp, rw, rp, ow, op,
            _vector(fc.mix), fkw, fkp, frw, frp, fvw, fvp,
        ]  # fmt: skip

    def _call(self, x: Tensor, old: dict[str, Tensor], new: dict[str, Tensor]) -> Tensor:
        cfg = self.model.config
        return native.ops().rwkv4_step(
            x, self._params, [old[n] for n in self.order], [new[n] for n in self.order], cfg.ffn_dim,
            cfg.vocab_size, cfg.layer_norm_eps,
        )  # fmt: skip


class RWKV56Step(FusedStep):
    """RWKV-5 and RWKV-6 (``rwkv56_step``): the same layer loop and state, their own time mixing."""

    model_cls = RWKV5

    def _layer(self, block: nn.Module) -> list[Tensor] | None:
        att, ffn = block.att, block.ffn
        c, fc = att.constants(), ffn.constants()
        gated = isinstance(att, RWKV6TimeMix) or att.gated
        layers = (att.receptance, att.key, att.value, att.gate if gated else None, att.output,
                  ffn.key, ffn.receptance, ffn.value)  # fmt: skip
        products = [(_EMPTY, _EMPTY) if x is None else _product(x) for x in layers]
        if any(p is None for p in products):
            return None
        if isinstance(att, RWKV6TimeMix):
            time_mix = [_vector(c.maa), _vector(att.time_maa_x), c.maa_w1, _vector(c.maa_w2), _vector(c.decay),
                        c.decay_w1, c.decay_w2]  # fmt: skip
            ffn_mix = _vector(1 - fc.maa.float())  # x + (x_prev - x) maa, as a lerp toward x
        else:
            time_mix = [_vector(c.mix), _EMPTY, _EMPTY, _EMPTY, _vector(c.log_w), _EMPTY, _EMPTY]
            ffn_mix = _vector(fc.mix)
        return [
            *time_mix, _vector(c.bonus), *(t for pair in products[:5] for t in pair),
            _vector(att.ln_x.weight), _vector(att.ln_x.bias), ffn_mix, *(t for pair in products[5:] for t in pair),
        ]  # fmt: skip

    def _call(self, x: Tensor, old: dict[str, Tensor], new: dict[str, Tensor]) -> Tensor:
        cfg = self.model.config
        version = 6 if isinstance(self.model, RWKV6) else 5
        return native.ops().rwkv56_step(
            x, self._params, old["att_x_prev"], old["wkv"], old["ffn_x_prev"], new["att_x_prev"], new["wkv"],
            new["ffn_x_prev"], version, cfg.n_head, cfg.head_size, cfg.ffn_dim, cfg.vocab_size, cfg.layer_norm_eps,
            cfg.ln_x_eps,
        )  # fmt: skip


class RWKV6Step(RWKV56Step):
    model_cls = RWKV6


_STEPS: dict[type[nn.Module], type[FusedStep]] = {
    RWKV7: RWKV7Step,
    RWKV4: RWKV4Step,
    RWKV5: RWKV56Step,
    RWKV6: RWKV6Step,
}


def install(model: nn.Module) -> bool:
    """Give an RWKV model the fused step (``model.step``, so one-token calls too); returns whether
    it did. Other models (the GPT baseline) keep their own step."""
    cls = _STEPS.get(type(model))
    if cls is None:
        return False
    model.step = cls(model)  # type: ignore[method-assign]
    return True
