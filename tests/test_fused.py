"""rwkvkit.fused: the whole one-token step of RWKV-4, 5, 6 and 7 in one native call, against the
models' own step (the PyTorch operations of models/rwkv4.py .. rwkv7.py).

Tolerance: float32 1e-5 of the logits' size (the same sums in another order; e^x within 2 ulp in
the native loops). The 16-bit and quantized variants are compared in tests/test_native.py
(whole models, native against portable). Here also: when the fused step must not run (gradients
wanted, train mode, shapes its loops do not take, compilers and exporters) the model's own step
runs instead, and the packed weights follow loads, copies and moves.
"""

from __future__ import annotations

import copy

import pytest
import torch

from rwkvkit import testing
from rwkvkit.fused import FusedStep
from rwkvkit.inference import optimize_for_inference
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.ops import native

ops = native.load(wait=True)
pytestmark = pytest.mark.skipif(
    ops is None, reason=f"native kernels unavailable: {native.unsupported_reason()}"
)

V = 211
MODELS = {
    "4": (RWKV4Config(vocab_size=V, n_layer=3, n_embd=96, ffn_dim=320), testing.random_rwkv4,
          testing.random_rwkv4_state_dict),
    "5": (RWKV5Config(vocab_size=V, n_layer=3, n_embd=128, ffn_dim=448, head_size=32), testing.random_rwkv5,
          testing.random_rwkv5_state_dict),
    # RWKV-5.0: no gate, a decay and bonus per head (stored as log u), attention narrower than C
    "5.0": (RWKV5Config(vocab_size=V, n_layer=2, n_embd=96, dim_att=64, ffn_dim=320, head_size=16, gate=False,
                        per_channel_decay=False, log_bonus=True), testing.random_rwkv5, testing.random_rwkv5_state_dict),
    "6": (RWKV6Config(vocab_size=V, n_layer=3, n_embd=128, ffn_dim=448, head_size=32, mix_lora=8, decay_lora=16),
          testing.random_rwkv6, testing.random_rwkv6_state_dict),
    "7": (RWKV7Config(vocab_size=V, n_layer=3, n_embd=128, ffn_dim=384, head_size=32, decay_lora=16,
                      iclr_lora=16, value_lora=8, gate_lora=24), testing.random_rwkv7, testing.random_rwkv7_state_dict),
}  # fmt: skip


def made(version: str, seed: int = 1) -> torch.nn.Module:
    config, make, _ = MODELS[version]
    return optimize_for_inference(make(config, seed=seed))


def own_step(model: torch.nn.Module, tokens: torch.Tensor, state: object) -> tuple[torch.Tensor, object]:
    return type(model).step(model, tokens, state)


def assert_same_step(
    model: torch.nn.Module, tokens: torch.Tensor, state: object
) -> tuple[torch.Tensor, object]:
    assert isinstance(model.step, FusedStep) and model.step.runs_native(tokens.shape[0])
    got, got_state = model.step(tokens, state)
    want, want_state = own_step(model, tokens, state)
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=0)
    for name, t in want_state.tensors().items():
        torch.testing.assert_close(
            got_state.tensors()[name], t, atol=1e-5 * (t.abs().max().item() + 1), rtol=0
        )
    return got, got_state


@pytest.mark.parametrize("version", list(MODELS))
def test_fused_step_is_the_models_step(version: str) -> None:
    """Batch 3 from a state after a prompt, five steps in a row, the fused state fed back."""
    model = made(version)
    gen = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        _, state = model(torch.randint(0, V, (3, 9), generator=gen))
        for _ in range(5):
            logits, state = assert_same_step(model, torch.randint(0, V, (3,), generator=gen), state)
        assert logits.shape == (3, V) and logits.dtype == torch.float32
        # from no state (zeros; RWKV-4's empty maximum) and through model(tokens) with one token
        assert_same_step(model, torch.tensor([4]), None)
        one, _ = model(torch.tensor([[4]]))
        torch.testing.assert_close(
            one[:, 0], own_step(model, torch.tensor([4]), None)[0], atol=1e-5 * 10, rtol=0
        )


@pytest.mark.parametrize("version", list(MODELS))
def test_fused_step_with_a_learned_initial_state(version: str) -> None:
    """A default state (state tuning) arrives expanded to the batch, not contiguous."""
    model = made(version)
    with torch.inference_mode():
        _, tuned = model(torch.tensor([[5, 6, 7]]))
        model.default_state = tuned
        assert_same_step(model, torch.tensor([1, 2]), None)


@pytest.mark.parametrize("version", list(MODELS))
def test_the_models_own_step_runs_where_the_fused_one_cannot(version: str) -> None:
    model = made(version)
    tokens = torch.tensor([3, 1])
    # gradients wanted: the model's step, so they reach the parameters
    model.requires_grad_(True)
    assert not model.step.runs_native(2)
    logits, _ = model.step(tokens)
    assert logits.requires_grad
    with torch.no_grad():
        assert model.step.runs_native(2)
    # more rows than the one-row kernels serve
    with torch.no_grad():
        assert not model.step.runs_native(17)
        many = torch.arange(17) % V
        torch.testing.assert_close(model.step(many)[0], own_step(model, many, None)[0])
    # train mode drops the step constants: nothing to pack
    model.train()
    with torch.no_grad():
        assert not model.step.runs_native(2)
    model.eval()
    optimize_for_inference(model)
    with torch.no_grad():
        assert model.step.runs_native(2)


def test_shapes_the_loops_do_not_take_run_the_models_step() -> None:
    config = RWKV7Config(vocab_size=V, n_layer=1, n_embd=24, ffn_dim=48, head_size=8, decay_lora=8,
                         iclr_lora=8, value_lora=8, gate_lora=8)  # fmt: skip
    model = optimize_for_inference(testing.random_rwkv7(config, seed=1))
    with torch.no_grad():
        assert not model.step.runs_native(1)
        torch.testing.assert_close(
            model.step(torch.tensor([3]))[0], own_step(model, torch.tensor([3]), None)[0]
        )
    model4 = optimize_for_inference(
        testing.random_rwkv4(RWKV4Config(vocab_size=V, n_layer=1, n_embd=40, ffn_dim=80))
    )
    with torch.no_grad():
        assert not model4.step.runs_native(1)


@pytest.mark.parametrize("version", list(MODELS))
def test_packed_weights_follow_loads_copies_and_moves(version: str) -> None:
    config, make, make_sd = MODELS[version]
    model = made(version, seed=1)
    tokens = torch.tensor([3, 1, 4])
    with torch.no_grad():
        before, _ = model.step(tokens)  # packs seed 1's weights
        twin = copy.deepcopy(model)
        twin.load_state_dict(make_sd(config, seed=2))
        fresh, _ = optimize_for_inference(make(config, seed=2)).step(tokens)
        torch.testing.assert_close(twin.step(tokens)[0], fresh, atol=1e-5 * fresh.abs().max().item(), rtol=0)
        assert torch.equal(model.step(tokens)[0], before)  # the original kept its own weights
        model.to(torch.bfloat16)  # new tensors: packed again, from the bf16 weights
        moved, _ = model.step(tokens)
        assert model.step.runs_native(3)
        assert 0 < (moved - before).abs().max() < 0.15  # bf16 rounding, as in test_inference.py


def test_compilers_see_the_models_own_operations() -> None:
    """torch.compile of ``model.step`` captures the model's operations, not the native call."""
    model = made("7")
    captured: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        captured.extend(str(node.target) for node in gm.graph.nodes)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(model.step, backend=backend, fullgraph=True)
    with torch.no_grad():
        got, _ = compiled(torch.tensor([7, 8]))
        want, _ = own_step(model, torch.tensor([7, 8]), None)
    assert captured and not any("rwkv7_step" in t for t in captured)
    assert any("linear_f32" in t for t in captured)  # the products' own native ops are traced
    torch.testing.assert_close(got, want, atol=1e-5 * want.abs().max().item(), rtol=0)
