"""The one-token decode step replayed from CUDA graphs: same numbers, a fraction of the launch cost.

A decode step of an RWKV model is hundreds of small kernels (a 24-layer model launches ~700), and
at small batch sizes the GPU waits on the CPU to launch them. :class:`GraphedStep` captures
``model.step`` once per batch *bucket* (1, 2, 4, 8, 16, 24, 32, 48, 64 rows) into a
``torch.cuda.CUDAGraph`` whose inputs and outputs live in static buffers, and replays it: a batch of
b rows runs in the smallest bucket that holds it, the spare rows computing on stale states that no
one reads (rows never mix: every op of a step is row-wise or a per-row matrix product).

The captured step writes the new state back into the bucket's static state, so a caller that
passes the state it was just given (the engine's decoding batch, step after step) pays no copy
at all; any other state (rows joined or left, a fresh prefix) is copied in first. The returned
logits are a copy; the returned state is a view of the static buffers, valid until the next call
with the same bucket (the engine only keeps rows of it through ``select``, which copies).

Batches above the largest bucket, and calls that record gradients, run the eager step. On a
device without CUDA graphs the same static buffers are run eagerly instead of replayed, so the
bucket and buffer logic is tested on the CPU (tests/test_cuda_graphs.py); exactness of the replay
against the eager step is tested on a GPU.

A graph reads the model's tensors at the addresses they had when it was captured. Weights changed
in place are seen; tensors replaced (a ``load_state_dict`` re-derives the step's constants, a move
makes new ones) are not, so :func:`graphed_step`, which keeps one GraphedStep per model for every
engine made on it, captures afresh when any address has changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .state import RecurrentState

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)
WARMUP_STEPS = 2  # eager steps before a capture: lazy kernel loading and Triton's autotuning happen there


def graphable(model: nn.Module) -> bool:
    """Whether a model's step has fixed shapes, so a graph can replay it: recurrent models, whose
    state does not grow (a transformer's cache does: GPT is left eager)."""
    config = getattr(model, "config", None)
    return hasattr(model, "initial_state") and getattr(config, "n_ctx", None) is None


@dataclasses.dataclass(eq=False)
class _Bucket:
    """One captured step: its static inputs and outputs, and how to run it again."""

    tokens: Tensor  # (n,) long
    state: RecurrentState  # batch n; holds the state after the last replay
    logits: Tensor  # (n, V) float32
    replay: Callable[[], None]
    last: RecurrentState | None = None  # the view handed out by the last call


def _addresses(model: nn.Module) -> tuple[int, ...]:
    """Where every tensor a step reads lives: parameters, buffers, and the derived step constants."""
    out = [t.data_ptr() for t in (*model.parameters(), *model.buffers())]
    for module in model.modules():
        prepared = getattr(module, "_prepared", None)
        if prepared is not None:
            out += [t.data_ptr() for t in prepared if isinstance(t, Tensor)]
    return tuple(out)


def graphed_step(model: nn.Module) -> GraphedStep:
    """The model's GraphedStep, kept on the model so engines made one after another (one per
    ``generate`` call) reuse its captures; made afresh when the model's tensors have moved."""
    where = _addresses(model)
    cached = model.__dict__.get("_graphed_step")
    if cached is None or cached.addresses != where:
        cached = GraphedStep(model)
        cached.addresses = where
        model.__dict__["_graphed_step"] = cached
    return cached


class GraphedStep:
    """``model.step`` with the same signature, replayed from one CUDA graph per batch bucket."""

    def __init__(self, model: nn.Module, buckets: tuple[int, ...] = BUCKETS) -> None:
        if not graphable(model):
            raise ValueError(f"{type(model).__name__}'s step changes shape as it runs: it cannot be graphed")
        self.model, self.buckets = model, tuple(sorted(buckets))
        self.device = next(model.parameters()).device
        self._captured: dict[int, _Bucket] = {}
        self._pool = None  # one memory pool for every bucket's graph (they never run at once)
        self.addresses: tuple[int, ...] = ()  # what graphed_step checks before reusing this

    def __reduce__(self) -> tuple:
        # kept on its model (graphed_step): a copied or pickled model starts without captures
        return (type(None), ())

    def __deepcopy__(self, memo: dict) -> None:
        return None

    def __call__(self, tokens: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        b = tokens.shape[0]
        n = next((n for n in self.buckets if n >= b), None)
        if n is None or torch.is_grad_enabled():
            return self.model.step(tokens, state)
        bucket = self._captured.get(n) or self._capture(n)
        bucket.tokens[:b].copy_(tokens)
        if state is not bucket.last:  # otherwise the static state already is this state
            for name, t in state.tensors().items():
                getattr(bucket.state, name)[:, :b].copy_(t)
        bucket.replay()
        bucket.last = type(state)(**{name: t[:, :b] for name, t in bucket.state.tensors().items()})
        return bucket.logits[:b].clone(), bucket.last

    @torch.no_grad()
    def _capture(self, n: int) -> _Bucket:
        model = self.model
        tokens = torch.zeros(n, dtype=torch.long, device=self.device)
        state = model.initial_state(n)
        logits = torch.empty(n, model.config.vocab_size, dtype=torch.float32, device=self.device)

        def body() -> None:
            out, new = model.step(tokens, state)
            logits.copy_(out)
            for name, t in new.tensors().items():
                getattr(state, name).copy_(t)

        if self.device.type != "cuda":
            bucket = _Bucket(tokens, state, logits, body)
        else:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    body()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                body()
            self._pool = graph.pool()
            bucket = _Bucket(tokens, state, logits, graph.replay)
        self._captured[n] = bucket
        return bucket
