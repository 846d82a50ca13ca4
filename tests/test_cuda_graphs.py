"""The decode step replayed from CUDA graphs (rwkvkit/cuda_graphs.py) and the engine on it.

On a GPU (``-m cuda``) the step is captured and replayed; on the CPU the same static buffers run
eagerly, which tests the buckets, the padding and the state hand-over. Either way:
- a graphed step equals the eager step on the same padded batch bit for bit (the same kernels on
  the same shapes; rows never mix), and the eager step on the unpadded batch to rounding;
- consecutive steps that pass the returned state back (no copy) equal steps on fresh copies;
- the engine gives the same tokens with graphs as without, and states it hands out are not
  changed by later replays.
"""

from __future__ import annotations

import pytest
import torch
from test_engine import REAL, MockModel, mixed_requests
from torch import nn

from rwkvkit.cuda_graphs import BUCKETS, GraphedStep, graphable
from rwkvkit.engine import Engine, Request, prefill
from rwkvkit.sampling import SamplingParams

RWKV = ["rwkv4", "rwkv5", "rwkv6", "rwkv7"]
VOCAB = 64


def _model(name: str, device: torch.device) -> nn.Module:
    return REAL[name]().to(device)


def _start(model: nn.Module, b: int, seed: int):
    """A non-trivial state for b rows: the state after 5 random tokens each."""
    tokens = torch.randint(0, VOCAB, (b, 5), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        _, state = model(tokens.to(next(model.parameters()).device))
    return state


def _tokens(b: int, seed: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b,), generator=torch.Generator().manual_seed(seed)).to(device)


@pytest.mark.parametrize("name", RWKV)
def test_graphed_step_equals_eager(name: str, device: torch.device) -> None:
    model = _model(name, device)
    graphed = GraphedStep(model)
    for b in (1, 3, 5, 24):
        n = next(n for n in BUCKETS if n >= b)
        state = _start(model, b, seed=b)
        eager_state = state.clone()
        with torch.no_grad():
            for t in range(4):  # the returned state goes back in: the no-copy path after the first step
                tokens = _tokens(b, seed=10 * b + t, device=device)
                logits, state = graphed(tokens, state)
                # the eager step on the padded batch: the same shapes, hence the same numbers
                pad = model.initial_state(n)
                for field, t_pad in pad.tensors().items():
                    t_pad[:, :b] = eager_state.tensors()[field]
                padded_tokens = torch.zeros(n, dtype=torch.long, device=device)
                padded_tokens[:b] = tokens
                want, want_state = model.step(padded_tokens, pad)
                assert torch.equal(logits, want[:b]), f"b={b} step {t}"
                for field, got in state.tensors().items():
                    assert torch.equal(got, want_state.tensors()[field][:, :b]), f"{field} b={b} step {t}"
                eager_state = want_state.select(list(range(b)))
        # and the plain eager step on the unpadded batch, to rounding
        with torch.no_grad():
            plain, _ = model.step(tokens, _start(model, b, seed=b))
        assert plain.shape == logits.shape


def test_unpadded_eager_agrees_to_rounding(device: torch.device) -> None:
    model = _model("rwkv7", device)
    graphed = GraphedStep(model)
    state = _start(model, 3, seed=1)
    tokens = _tokens(3, seed=2, device=device)
    with torch.no_grad():
        got, got_state = graphed(tokens, state.clone())
        want, want_state = model.step(tokens, state)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for field, t in want_state.tensors().items():
        torch.testing.assert_close(got_state.tensors()[field], t, atol=1e-4, rtol=1e-4)


def test_large_batches_and_gradients_run_eagerly(device: torch.device) -> None:
    model = _model("rwkv4", device)
    graphed = GraphedStep(model, buckets=(1, 2))
    state = _start(model, 3, seed=0)
    tokens = _tokens(3, seed=1, device=device)
    with torch.no_grad():
        got, _ = graphed(tokens, state)
        want, _ = model.step(tokens, state)
    assert torch.equal(got, want) and not graphed._captured  # 3 rows > the largest bucket
    logits, _ = graphed(tokens[:1], state.select([0]))  # grad mode on: eager, differentiable
    assert logits.requires_grad and not graphed._captured


def test_only_fixed_shape_models_are_graphed() -> None:
    assert graphable(REAL["rwkv7"]()) and not graphable(REAL["gpt"]()) and not graphable(MockModel())
    with pytest.raises(ValueError, match="cannot be graphed"):
        GraphedStep(REAL["gpt"]())
    gpt = REAL["gpt"]()
    assert Engine(gpt, cuda_graphs=None)._step == gpt.step  # GPT keeps its eager step


@pytest.mark.parametrize("name", ["rwkv4", "rwkv7"])
def test_engine_with_graphs_gives_the_same_tokens(name: str, device: torch.device) -> None:
    """Mixed sampling settings, ragged prompts, rows ending at different steps (so the batch
    shrinks through the buckets), one row joining mid-decode."""
    model = _model(name, device)
    results = []
    for graphs in (False, True):
        engine = Engine(model, cuda_graphs=graphs, prefill_chunk=8)
        rows = [engine.add(r) for r in mixed_requests(vocab=VOCAB)]
        done = {}
        for i, event in enumerate(engine.run()):
            if i == 5:
                rows.append(
                    engine.add(Request(prompt=[1, 2, 3], params=SamplingParams(temperature=0), max_tokens=7))
                )
            if event.result is not None:
                done[event.row] = event.result.token_ids
        results.append([done[r] for r in rows])
    assert results[0] == results[1]


def test_kept_states_are_not_changed_by_later_replays(device: torch.device) -> None:
    """A row that ends with keep_state hands out its state while the others go on decoding in the
    same static buffers: that state must be a copy."""
    model = _model("rwkv7", device)
    engine = Engine(model, cuda_graphs=True)
    greedy = SamplingParams(temperature=0)
    short = engine.add(Request(prompt=[5, 6, 7], params=greedy, max_tokens=2, keep_state=True))
    engine.add(Request(prompt=[8, 9], params=greedy, max_tokens=12))
    kept = None
    for event in engine.run():
        if event.row == short and event.result is not None:
            kept = event.result
            snapshot = (kept.state.clone(), kept.logits.clone())
    assert kept is not None
    for field, t in kept.state.tensors().items():
        assert torch.equal(t, snapshot[0].tensors()[field]), field
    assert torch.equal(kept.logits, snapshot[1])
    # and it is the right state: the prompt and its two tokens read by the model directly
    want = prefill(model, [5, 6, 7, *kept.token_ids])
    torch.testing.assert_close(kept.logits, want.logits, atol=1e-4, rtol=1e-4)


def test_engines_on_one_model_share_its_captures(device: torch.device) -> None:
    """One GraphedStep per model: a second engine (a second ``generate`` call) reuses the captures;
    new weights loaded (new step constants) make it capture afresh, and the results follow them."""
    import copy

    from rwkvkit.cuda_graphs import graphed_step
    from rwkvkit.inference import optimize_for_inference

    model = optimize_for_inference(_model("rwkv4", device))
    greedy = SamplingParams(temperature=0)
    first = Engine(model, cuda_graphs=True)
    first.add(Request(prompt=[1, 2, 3], params=greedy, max_tokens=3))
    list(first.run())
    assert Engine(model, cuda_graphs=True)._step is first._step and first._step._captured
    other = REAL["rwkv4"]().to(device)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    model.load_state_dict(other.state_dict())
    fresh = graphed_step(model)
    assert fresh is not first._step and not fresh._captured
    engine = Engine(model, cuda_graphs=True)
    row = engine.add(Request(prompt=[1, 2, 3], params=greedy, max_tokens=6))
    got = next(e.result for e in engine.run() if e.result is not None and e.row == row).token_ids
    eager = Engine(model, cuda_graphs=False)
    row = eager.add(Request(prompt=[1, 2, 3], params=greedy, max_tokens=6))
    assert got == next(e.result for e in eager.run() if e.result is not None and e.row == row).token_ids
    assert copy.deepcopy(model).__dict__["_graphed_step"] is None  # a copy starts without captures
