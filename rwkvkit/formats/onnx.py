"""ONNX export of a model's one-token step, for onnxruntime (on phones, in browsers, from C#/Java/JS).

The graph is ``model.step`` for every RWKV version: one token per sequence in, its logits and the new
recurrent state out, with the state as named inputs and outputs, one per field of the version's state
dataclass (:mod:`rwkvkit.state`)::

    inputs:  token (B,) int64, state.att_x_prev (L, B, C) float32, state.wkv ..., ...
    outputs: logits (B, V) float32, new_state.att_x_prev, new_state.wkv, ...

The batch B is dynamic. A caller starts from zeros of those shapes (the graph's metadata lists each
field's shape with B as "batch") and feeds every ``new_state.*`` output back as ``state.*``.
:func:`run_onnx_steps` does exactly that with onnxruntime; tests/test_onnx.py checks it against
rwkvkit over 32 steps.

Exported by default with torch's TorchScript-based exporter: the step is plain tensor code, which it
traces in about a second. torch marks that exporter deprecated in favour of its torch.export-based
one, which ``dynamo=True`` selects (it needs onnxscript, and takes 10-20 s for a toy model here); both
give the same graph interface and agree with rwkvkit (tests/test_onnx.py runs both).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import RwkvkitError
from ..fileio import atomic_write

OPSET = 17  # LayerNormalization is a standard op from 17 on
TOKEN = "token"
LOGITS = "logits"
STATE_IN = "state."
STATE_OUT = "new_state."


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise RwkvkitError(
            "ONNX export needs the onnx package: pip install 'rwkvkit[onnx]' (onnx, onnxruntime)"
        ) from None


class _Step(nn.Module):
    """``model.step`` with the state spread over positional tensors, as an exporter wants it."""

    def __init__(self, model: nn.Module, state_cls: type, names: list[str]) -> None:
        super().__init__()
        self.model, self.state_cls, self.names = model, state_cls, names

    def forward(self, token: Tensor, *fields: Tensor) -> tuple[Tensor, ...]:
        state = self.state_cls(**dict(zip(self.names, fields, strict=True)))
        logits, new = self.model.step(token, state)
        return (logits, *new.tensors().values())


def state_fields(model: nn.Module, batch: int = 1) -> dict[str, tuple[int, ...]]:
    """The model's state fields and their shapes for ``batch`` sequences."""
    state = model.initial_state(batch)  # type: ignore[operator]
    return {name: tuple(t.shape) for name, t in state.tensors().items()}


def export_onnx(model: nn.Module, path: str | Path, *, dynamo: bool = False) -> Path:
    """Write ``model``'s one-token step as an ONNX graph with float32 weights (see the module
    docstring), atomically. (16-bit weights are not offered: the step mixes float32 state and
    16-bit activations, which torch promotes and onnxruntime's typed kernels refuse.)"""
    _require_onnx()
    if not hasattr(model, "initial_state") or getattr(model.config, "version", None) not in (
        "4",
        "5",
        "6",
        "7",
    ):
        raise RwkvkitError("ONNX export is for RWKV models (versions 4 to 7)")
    model = model.float().eval()
    state = model.initial_state(2)  # type: ignore[operator]
    names = list(state.tensors())
    wrapper = _Step(model, type(state), names)
    token = torch.zeros(2, dtype=torch.long)
    inputs = [TOKEN, *(STATE_IN + n for n in names)]
    outputs = [LOGITS, *(STATE_OUT + n for n in names)]
    batch_axis = {TOKEN: {0: "batch"}, LOGITS: {0: "batch"}}
    batch_axis.update({STATE_IN + n: {1: "batch"} for n in names})
    batch_axis.update({STATE_OUT + n: {1: "batch"} for n in names})
    shapes = {n: ["batch" if i == 1 else d for i, d in enumerate(s)] for n, s in state_fields(model).items()}
    if dynamo:
        from torch.export import Dim

        batch = Dim("batch", min=1, max=1 << 16)
        axes: dict[str, Any] = {"dynamic_shapes": ({0: batch}, tuple({1: batch} for _ in names))}
    else:
        axes = {"dynamic_axes": batch_axis}
    meta = {
        "rwkvkit_version": model.config.version,  # type: ignore[union-attr]
        "rwkvkit_config": json.dumps(model.config.to_dict()),  # type: ignore[union-attr]
        "rwkvkit_state_shapes": json.dumps(shapes),
    }

    def write(tmp: Path) -> None:
        import onnx

        with torch.no_grad(), warnings.catch_warnings():
            # The tracer notes the step's Python-level checks (state shapes, the unpacking of a stacked
            # (6, B, C) tensor): they hold for every batch size, so the graph does not depend on them.
            # Its deprecation notice is ours to act on (see the module docstring), not the user's.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                wrapper,
                (token, *state.tensors().values()),
                str(tmp),
                input_names=inputs,
                output_names=outputs,
                opset_version=OPSET if not dynamo else max(OPSET, 18),
                dynamo=dynamo,
                **axes,
            )
        graph = onnx.load(str(tmp))
        for key, value in meta.items():
            graph.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        onnx.save(graph, str(tmp))

    atomic_write(path, write)
    return Path(path)


def run_onnx_steps(path: str | Path, tokens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Run an exported step in onnxruntime over ``tokens`` (B, T), from the zero state, feeding each
    step's state to the next. Returns the (B, T, V) logits and the final state fields."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one-token steps of small graphs: threads only add waiting
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    B, T = tokens.shape
    shapes: dict[str, Any] = json.loads(meta["rwkvkit_state_shapes"])
    state = {
        STATE_IN + n: np.zeros([B if d == "batch" else d for d in s], np.float32) for n, s in shapes.items()
    }
    out_names = [o.name for o in session.get_outputs()]
    steps = []
    for t in range(T):
        results = dict(zip(out_names, session.run(None, {TOKEN: tokens[:, t].numpy(), **state}), strict=True))
        steps.append(torch.from_numpy(results[LOGITS]))
        state = {STATE_IN + n: results[STATE_OUT + n] for n in shapes}
    final = {n: torch.from_numpy(state[STATE_IN + n]) for n in shapes}
    return torch.stack(steps, dim=1), final
