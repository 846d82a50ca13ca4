"""Random RWKV checkpoints with realistic value ranges, for tests and benchmarks, and the drivers
the differential tests share.

Real checkpoints cannot be downloaded here, so differential tests run on these: any two
implementations that agree on random weights in the trained models' value ranges agree on
the computation, not just on one lucky model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from .models.gpt import GPT, GPTConfig
from .models.rwkv4 import RWKV4, RWKV4Config
from .models.rwkv5 import RWKV5, RWKV5Config
from .models.rwkv6 import RWKV6, RWKV6Config
from .models.rwkv7 import RWKV7, RWKV7Config


def random_rwkv4_state_dict(config: RWKV4Config, seed: int = 0) -> dict[str, Tensor]:
    """A BlinkDL-named RWKV-4 state dict of float32 tensors drawn from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in RWKV4(config).state_dict().items()}
    sd = {}
    for name, shape in shapes.items():
        if name.endswith("time_decay"):
            t = torch.rand(shape, generator=gen) * 6 - 4  # per-step decay e^-e^td from ~1 - 0.02 to ~0
        elif name.endswith("time_first"):
            t = torch.randn(shape, generator=gen)
        elif ".time_mix_" in name:
            t = torch.rand(shape, generator=gen)
        elif name.endswith(".bias"):
            t = torch.randn(shape, generator=gen) * 0.1
        elif ".ln" in name or name.startswith("ln_out"):
            t = 1 + torch.randn(shape, generator=gen) * 0.1
        elif name == "emb.weight":
            t = torch.randn(shape, generator=gen)
        else:  # linear layers (out, in)
            t = torch.randn(shape, generator=gen) / shape[1] ** 0.5
        sd[name] = t.float()
    return sd


def random_rwkv4(config: RWKV4Config, seed: int = 0) -> RWKV4:
    """An RWKV4 model holding :func:`random_rwkv4_state_dict` weights."""
    model = RWKV4(config)
    model.load_state_dict(random_rwkv4_state_dict(config, seed))
    return model.eval()


def _meta_shapes(model_cls: type[torch.nn.Module], config: object) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in model_cls(config).state_dict().items()}


def _common_tensor(name: str, shape: torch.Size, gen: torch.Generator) -> Tensor:
    """Weights every version shares: layer norms, embedding, linear layers (out, in)."""
    if name.endswith(".bias"):
        return torch.randn(shape, generator=gen) * 0.1
    if ".ln" in name or name.startswith("ln_out"):
        return 1 + torch.randn(shape, generator=gen) * 0.1
    if name == "emb.weight":
        return torch.randn(shape, generator=gen)
    return torch.randn(shape, generator=gen) / shape[-1] ** 0.5


def random_rwkv7_state_dict(config: RWKV7Config, seed: int = 0) -> dict[str, Tensor]:
    """A BlinkDL-named RWKV-7 state dict in the value ranges of trained models.

    The ranges follow the official initialisation and what trained checkpoints drift to: token-shift
    weights in (0, 1), w0 from fast (-7) to slow (+1) decay, a0 around sigmoid^-1(0.45), v0 around 0.7,
    k_k near 0.7, k_a near 1, r_k small, and low-rank matrices scaled so their terms matter.
    """
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in _meta_shapes(RWKV7, config).items():
        part = name.rsplit(".", 1)[-1]
        if part in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            t = torch.rand(shape, generator=gen)
        elif part == "w0":
            t = torch.rand(shape, generator=gen) * 8 - 7
        elif part == "a0":
            t = torch.randn(shape, generator=gen) * 0.5 - 0.2
        elif part == "v0":
            t = torch.randn(shape, generator=gen) * 0.5 + 0.7
        elif part == "k_k":
            t = 0.7 + torch.randn(shape, generator=gen) * 0.1
        elif part == "k_a":
            t = 1 + torch.randn(shape, generator=gen) * 0.1
        elif part == "r_k":
            t = torch.randn(shape, generator=gen) * 0.3
        elif part in ("w1", "a1", "v1", "g1"):  # (C, D): down-projection
            t = torch.randn(shape, generator=gen) / shape[0] ** 0.5
        elif part in ("w2", "a2", "v2", "g2"):  # (D, C): up-projection
            t = torch.randn(shape, generator=gen) * 0.5 / shape[0] ** 0.5
        else:
            t = _common_tensor(name, shape, gen)
        sd[name] = t.float()
    return sd


def random_rwkv7(config: RWKV7Config, seed: int = 0) -> RWKV7:
    """An RWKV7 model holding :func:`random_rwkv7_state_dict` weights."""
    model = RWKV7(config)
    model.load_state_dict(random_rwkv7_state_dict(config, seed))
    return model.eval()


def random_rwkv5_state_dict(config: RWKV5Config, seed: int = 0) -> dict[str, Tensor]:
    """A BlinkDL-named RWKV-5 (5.0, 5.1 or 5.2, as the config says) state dict.

    time_decay spans per-token decays from ~1 - 0.0025 to e^-7 (trained models have both kinds),
    so the chunked WKV's factorised and pairwise paths are both exercised.
    """
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in _meta_shapes(RWKV5, config).items():
        if name.endswith("time_decay"):
            t = torch.rand(shape, generator=gen) * 8 - 6
        elif name.endswith("time_first"):
            t = torch.randn(shape, generator=gen) - 1  # log of the bonus
        elif name.endswith("time_faaaa"):
            t = torch.randn(shape, generator=gen) * 0.5
        elif ".time_mix_" in name:
            t = torch.rand(shape, generator=gen)
        else:
            t = _common_tensor(name, shape, gen)
        sd[name] = t.float()
    return sd


def random_rwkv6_state_dict(config: RWKV6Config, seed: int = 0) -> dict[str, Tensor]:
    """A BlinkDL-named RWKV-6 state dict; the low-rank shift and decay terms are large enough to
    move each token's mix and decay visibly (trained models' are)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in _meta_shapes(RWKV6, config).items():
        part = name.rsplit(".", 1)[-1]
        if part == "time_decay":
            t = torch.rand(shape, generator=gen) * 7 - 6
        elif part in ("time_maa_w1", "time_decay_w1"):  # (C, D)
            t = torch.randn(shape, generator=gen) * 0.5 / shape[0] ** 0.5
        elif part in ("time_maa_w2", "time_decay_w2"):  # (5, D, C) and (D, A)
            t = torch.randn(shape, generator=gen) * 0.5 / shape[-2] ** 0.5
        elif part == "time_faaaa":
            t = torch.randn(shape, generator=gen) * 0.5
        elif part.startswith("time_maa_"):
            t = torch.rand(shape, generator=gen)
        else:
            t = _common_tensor(name, shape, gen)
        sd[name] = t.float()
    return sd


def random_rwkv5(config: RWKV5Config, seed: int = 0) -> RWKV5:
    model = RWKV5(config)
    model.load_state_dict(random_rwkv5_state_dict(config, seed))
    return model.eval()


def random_rwkv6(config: RWKV6Config, seed: int = 0) -> RWKV6:
    model = RWKV6(config)
    model.load_state_dict(random_rwkv6_state_dict(config, seed))
    return model.eval()


def random_gpt(config: GPTConfig, seed: int = 0) -> GPT:
    """A GPT baseline with seeded random weights large enough that attention is far from uniform."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in _meta_shapes(GPT, config).items():
        if name.startswith("ln_f"):
            t = _common_tensor("ln_out" + name[4:], shape, gen)
        elif name in ("wte.weight", "wpe.weight"):
            t = torch.randn(shape, generator=gen)
        else:
            t = _common_tensor(name, shape, gen)
        sd[name] = t.float()
    model = GPT(config)
    model.load_state_dict(sd)
    return model.eval()


def step_by_step(model: nn.Module, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
    """The recurrent mode written out: ``model.step`` on each position of tokens (B, T) in turn.
    Returns (B, T, V) logits and the final state, to compare with one ``model(tokens, state)``."""
    outs = []
    for t in range(tokens.shape[1]):
        logits, state = model.step(tokens[:, t], state)
        outs.append(logits)
    return torch.stack(outs, dim=1), state


def assert_calls_agree(model: nn.Module, tokens: Tensor, split: int, *, tol: float) -> None:
    """How a caller may feed tokens (B, T) does not change the result: one call, two calls split at
    ``split`` with the state carried, one call per token (``model(tokens[:, t : t + 1], state)``)
    from the empty state. Logits ((B, T, V) float32) and final states agree within ``tol``."""
    with torch.no_grad():
        whole, whole_state = model(tokens)
        first, mid = model(tokens[:, :split])
        rest, split_state = model(tokens[:, split:], mid)
        outs, state = [], None
        for t in range(tokens.shape[1]):
            out, state = model(tokens[:, t : t + 1], state)
            outs.append(out)
    assert whole.shape == (*tokens.shape, whole.shape[-1]) and whole.dtype == torch.float32
    torch.testing.assert_close(torch.cat([first, rest], dim=1), whole, atol=tol, rtol=tol)
    torch.testing.assert_close(torch.cat(outs, dim=1), whole, atol=tol, rtol=tol)
    for name, t in whole_state.tensors().items():
        torch.testing.assert_close(split_state.tensors()[name], t, atol=tol, rtol=tol, msg=name)
        torch.testing.assert_close(state.tensors()[name], t, atol=tol, rtol=tol, msg=name)


def assert_step_matches_forward(model: nn.Module, vocab_size: int, *, tol: float, batch: int = 3) -> None:
    """Token-by-token ``model.step`` equals one ``model.forward`` over the same 21 tokens, both
    continuing the (non-zero) state after a 9-token prefix: logits and every state field, within
    ``tol`` absolute and relative."""
    gen = torch.Generator().manual_seed(3)
    prefix, tokens = (torch.randint(0, vocab_size, (batch, n), generator=gen) for n in (9, 21))
    with torch.no_grad():
        _, start = model(prefix)
        whole, whole_state = model.forward(tokens, start)
        steps, step_state = step_by_step(model, tokens, start)
    torch.testing.assert_close(steps, whole, atol=tol, rtol=tol)
    for name, t in whole_state.tensors().items():
        got = step_state.tensors()[name]
        torch.testing.assert_close(got, t, atol=tol, rtol=tol, msg=lambda m, n=name: f"state field {n}: {m}")


def assert_step_gradients_match_forward(
    model: nn.Module,
    vocab_size: int,
    state_loss: Callable[[Any], Tensor],
    *,
    unused: Sequence[str] = (),
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Training through either mode gives every parameter the same, finite gradient.

    The loss reads the logits of 20 tokens run from the state after a 6-token prefix (batch 2) and
    ``state_loss(final_state)``; parameters named in ``unused`` must get no gradient in either mode.
    Leaves the model in training mode.
    """
    gen = torch.Generator().manual_seed(5)
    prefix, tokens = (torch.randint(0, vocab_size, (2, n), generator=gen) for n in (6, 20))
    with torch.no_grad():
        start = model(prefix)[1]
    model.train()

    def loss(run: Callable[..., tuple[Tensor, Any]]) -> Tensor:
        logits, state = run(model, tokens, start)
        return logits.logsumexp(-1).mean() + 1e-2 * state_loss(state)

    by_forward = parameter_gradients(model, lambda: loss(lambda m, t, s: m.forward(t, s)))
    by_step = parameter_gradients(model, lambda: loss(step_by_step))
    for name, g in by_forward.items():
        if name in unused:
            assert g is None and by_step[name] is None, f"{name} is unused but got a gradient"
            continue
        assert g is not None and bool(torch.isfinite(g).all()), f"{name}: no or non-finite gradient"
        torch.testing.assert_close(
            by_step[name], g, atol=atol, rtol=rtol, msg=lambda m, n=name: f"d/d{n}: {m}"
        )


@contextlib.contextmanager
def recording_score_paths(op_module: ModuleType) -> Iterator[list[str]]:
    """Inside the block, each ``decayed_scores`` call of a chunked WKV module (rwkvkit.ops.wkv5 or
    wkv7) appends the path it took, "factorised" or "pairwise", to the list it yields."""
    seen: list[str] = []
    real = op_module.decayed_scores

    def spy(*args: Any, factorise: bool, **kwargs: Any) -> Tensor:
        seen.append("factorised" if factorise else "pairwise")
        return real(*args, factorise=factorise, **kwargs)

    op_module.decayed_scores = spy
    try:
        yield seen
    finally:
        op_module.decayed_scores = real


def parameter_gradients(model: nn.Module, loss: Callable[[], Tensor]) -> dict[str, Tensor | None]:
    """Every parameter's gradient of ``loss()`` (computed afresh, from zero), by name."""
    model.zero_grad(set_to_none=True)
    loss().backward()
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads
