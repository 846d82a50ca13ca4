"""Small pieces every model file shares: token shift, input and state checks, step constants."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InputError, StateError
from ..ops.linear import linear
from ..state import RecurrentState

__all__ = [
    "StepConstants",
    "as_token_batch",
    "as_token_column",
    "check_config",
    "check_state_shapes",
    "count_layers",
    "lowrank",
    "prepare_step_constants",
    "run_blocks",
    "token_shift",
    "zeros",
]


def token_shift(x: Tensor, x_prev: Tensor) -> Tensor:
    """The previous token's input at every position: x_prev, x_0, ..., x_{T-2}. (B, T, C)"""
    return torch.cat([x_prev[:, None], x[:, :-1]], dim=1)


def count_layers(keys: Iterable[str], prefix: str = "blocks.") -> int:
    """The number of layers of a state dict, whose blocks must be numbered 0..N-1 without gaps.

    Checked before anything is built: a single stray ``blocks.99999999.*`` key must not make a
    model of 10^8 layers, and a missing block must not go unnoticed. Raises :class:`ConfigError`.
    """
    indices: set[int] = set()
    for key in keys:
        if key.startswith(prefix):
            index = key[len(prefix) :].split(".", 1)[0]
            if not (index.isascii() and index.isdigit()):
                raise ConfigError(f"key {key!r}: the block index {index!r} is not a number")
            indices.add(int(index))
    if not indices:
        raise ConfigError(f"no {prefix}N.* keys: the checkpoint holds no layers")
    n = len(indices)
    if max(indices) != n - 1:
        gap = next(i for i in range(n) if i not in indices)
        raise ConfigError(
            f"the layers must be {prefix}0..{prefix}{n - 1} without gaps, but {prefix}{gap} is missing "
            f"and there is a {prefix}{max(indices)}; the checkpoint is damaged or not one model"
        )
    return n


def check_config(config: Any) -> None:
    """Type and range checks of a model config dataclass, by field type: every int is >= 1 (>= 0
    where the default 0 means "derive it"), every bool a bool, every epsilon finite and in (0, 1).
    Ints given as floats or floats as ints are converted when exact; anything else is a ConfigError."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}")
        elif kind == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            least = 0 if f.default == 0 else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"{f.name} must be an integer >= {least}, got {value!r}")
        elif kind == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
            value = float(value)
            if f.name.endswith("eps") and not (math.isfinite(value) and 0 < value < 1):
                raise ConfigError(f"{f.name} must be a finite number between 0 and 1, got {value!r}")
        object.__setattr__(config, f.name, value)


def as_token_batch(tokens: Tensor | list[int], device: torch.device, vocab_size: int) -> Tensor:
    """Accept (B, T) ids, a 1-D tensor or a list; return a (B, T) long tensor on the model's device,
    every id checked to be in 0..vocab_size-1 (an :class:`InputError` otherwise)."""
    if isinstance(tokens, Tensor):
        check_token_ids(tokens.reshape(-1)[:0], vocab_size)  # the dtype, before casting it away
    try:
        t = torch.as_tensor(tokens, dtype=torch.long, device=device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise InputError(f"tokens must be integer ids, as a list or a tensor: {e}") from None
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[1] == 0:
        raise InputError(f"tokens must be (B, T) with T >= 1, got shape {tuple(t.shape)}")
    return check_token_ids(t, vocab_size)


def as_token_column(tokens: Tensor, vocab_size: int) -> Tensor:
    """The ids a model's ``step`` takes: one per sequence, (B,), each in the vocabulary.

    The range check reads the ids on the host, so it runs only where that costs nothing: on the
    CPU, outside torch.compile. A GPU decode step stays free of host syncs (its ids come from the
    sampler, always in range; :meth:`forward` and the engine check what users pass in)."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 1:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise InputError(f"step takes one token per sequence, a tensor of shape (B,); got {shape}")
    if tokens.device.type != "cpu":
        return tokens
    return check_token_ids(tokens, vocab_size)


def check_token_ids(tokens: Tensor, vocab_size: int) -> Tensor:
    """``tokens`` if every id is in 0..vocab_size-1: one min and one max, not an IndexError deep
    inside the embedding (or, on a GPU, a device-side assert that kills the process). Skipped
    while torch.compile traces, where reading values on the host would break the graph."""
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise InputError(f"token ids must be integers, got a {tokens.dtype} tensor")
    if tokens.numel() and not torch.compiler.is_compiling():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            raise InputError(
                f"token id {lo if lo < 0 else hi} is outside this model's vocabulary (0..{vocab_size - 1}); "
                "were the ids made by another model's tokenizer?"
            )
    return tokens


def check_state_shapes(state: RecurrentState, cls: type[RecurrentState], shapes: dict[str, tuple]) -> None:
    """Refuse a state from another model, version or batch with a message, not a shape error deep inside.

    ``shapes`` maps each field to the shape this model needs (e.g. from the state class's ``shapes``).
    """
    if type(state) is not cls:
        raise StateError(
            f"expected an {cls.__name__} for this RWKV-{cls.version} model, got {type(state).__name__}"
        )
    for name, want in shapes.items():
        got = getattr(state, name).shape
        if got != want:
            raise StateError(
                f"state field {name} has shape {tuple(got)}, but this model needs {want} "
                "(n_layer, batch, ...): was it made by another model or for another batch size?"
            )


def run_blocks(blocks: nn.ModuleList, x: Tensor, state: RecurrentState, *, step: bool) -> tuple[Tensor, Any]:
    """x through every block in turn, each on its layer's part of the state: ``block(x, part)`` for
    T tokens, ``block.step(x, part)`` for one. Returns x and the new whole state."""
    layers = []
    for i, block in enumerate(blocks):
        x, layer = (block.step if step else block)(x, state.layer(i))
        layers.append(layer)
    return x, type(state).stack(layers)


def lowrank(x: Tensor, down: Tensor, up: Tensor, inner: Any = None) -> Tensor:
    """A low-rank projection ``inner(x @ down^T) @ up^T``, down (D, C) and up (C', D) held as
    linear layers hold their weights. Computed in the matrices' dtype, returned in x's."""
    h = linear(x.to(down.dtype), down)
    return linear(h if inner is None else inner(h), up).to(x.dtype)


def relu_squared(h: Tensor) -> Tensor:
    """relu(h)^2, the FFN's hidden layer, for ``h`` fresh from its product (nothing else holds it):
    in place unless autograd records. A prompt's (T, F) hidden layer is megabytes, and two new
    tensors of it (each page-faulted in, then read and written) were ~5% of RWKV-7 prefill."""
    if torch.is_grad_enabled() and h.requires_grad:
        return torch.square(torch.relu(h))
    return torch.relu_(h).square_()


def head_norm(y: Tensor, n_head: int, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """GroupNorm over heads (``ln_x`` of RWKV-5/6/7): each head's channels normalised on their own,
    then scaled and shifted per channel. y: (M, C). The numbers of ``F.group_norm``, from plain
    reductions: the CPU ``group_norm`` and ``layer_norm`` split even one token's 12 groups across
    OpenMP threads, and beside a busy core their barrier waits for a descheduled thread (~1-3 ms a
    call instead of 12-26 us at 2 threads; RWKV-7 0.1B decode fell from 7 to 2.5 tokens/s), while
    reductions this small run on the calling thread."""
    M, C = y.shape
    h = y.view(M, n_head, C // n_head)
    centred = h - h.mean(dim=-1, keepdim=True)
    normed = centred * torch.rsqrt((centred * centred).mean(dim=-1, keepdim=True) + eps)
    return torch.addcmul(bias, normed.view(M, C), weight)


def zeros(shape: tuple[int, ...], device: torch.device | str) -> Tensor:
    return torch.zeros(shape, dtype=torch.float32, device=device)


class StepConstants(nn.Module):
    """Base of a mixing module whose one-token step needs values derived from its own parameters.

    A decode step would otherwise redo them every token: the decay ``-exp(time_decay)``, the mix
    vectors stacked so one lerp gives every projection's input, float32 copies. ``derive_constants``
    computes them (differentiably); :meth:`prepare` stores a detached copy for inference, which
    ``rwkvkit.inference.optimize_for_inference`` (so ``load_model``) calls once.

    The stored copy cannot outlive the values it came from through the module's own methods:
    ``train()`` drops it (training changes the parameters), and ``load_state_dict`` and moves
    (``.to()``, ``.cuda()``, ``.half()``) derive it again from the new values. While autograd
    records (grad mode on), :meth:`constants` derives afresh, so gradients reach the parameters
    through the step too. Writing a parameter in place under ``torch.no_grad()`` is the one change
    it cannot see: call :meth:`prepare` (or ``prepare_step_constants``) again after such an edit.
    """

    def __init__(self) -> None:
        super().__init__()
        self._prepared: Any = None
        self._lowrank_dtype: torch.dtype | None = None
        self.register_load_state_dict_post_hook(_rederive_after_load)

    def derive_constants(self) -> Any:
        """The step's constants from the current parameters, as a NamedTuple of tensors (or None)."""
        raise NotImplementedError

    @torch.no_grad()
    def prepare(self, lowrank_dtype: torch.dtype | None = None) -> None:
        """Store the constants. Fields the constants class names in its ``lowrank`` attribute (the
        low-rank projections, float32 when derived) are stored in ``lowrank_dtype`` if given: what
        ``optimize_for_inference`` picks for the kernels that will read them. It is remembered
        for later re-preparations (moves, loads) until ``train()``."""
        if lowrank_dtype is not None:
            self._lowrank_dtype = lowrank_dtype
        # A parameter itself (what .float() of a float32 one returns) is kept: it is the live
        # tensor. Anything derived is cloned, so none is a view of storage that may be replaced,
        # and made contiguous: a transposed view becomes the (out, in) matrix the kernels read.
        derived = self.derive_constants()
        lowrank = set(getattr(derived, "lowrank", ()))
        stored = []
        for name, t in zip(derived._fields, derived, strict=True):
            if t is not None and name in lowrank and self._lowrank_dtype is not None:
                t = t.to(self._lowrank_dtype)
            if t is not None and not isinstance(t, nn.Parameter):
                t = t.detach().clone(memory_format=torch.contiguous_format)
            stored.append(t)
        self._prepared = derived._make(stored)

    @property
    def prepared(self) -> bool:
        return self._prepared is not None

    def constants(self) -> Any:
        """The prepared constants when there are some and no gradient is wanted; else derived now."""
        if self._prepared is None or torch.is_grad_enabled():
            return self.derive_constants()
        return self._prepared

    def train(self, mode: bool = True) -> StepConstants:
        if mode:
            self._prepared = None
            self._lowrank_dtype = None
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> StepConstants:
        was_prepared = self._prepared is not None
        self._prepared = None
        out = super()._apply(fn, recurse)
        if was_prepared:
            self.prepare()
        return out


def _rederive_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    # runs after the module and its children have loaded, so every parameter is the new one
    if isinstance(module, StepConstants) and module.prepared:
        module.prepare()


def prepare_step_constants(model: nn.Module, lowrank_dtype: torch.dtype | None = None) -> nn.Module:
    """Derive every mixing module's step constants once (see :class:`StepConstants`); returns model."""
    for module in model.modules():
        if isinstance(module, StepConstants):
            module.prepare(lowrank_dtype)
    return model
