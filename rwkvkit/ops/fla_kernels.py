"""fla-core's Triton kernels as the CUDA backends of :func:`~rwkvkit.ops.wkv5.wkv5` and :func:`~rwkvkit.ops.wkv7.wkv7`.

flash-linear-attention (``pip install "rwkvkit[gpu]"`` installs its core, ``fla-core``) has chunked
kernels with hand-written backwards for RWKV-6 and RWKV-7 (``chunk_rwkv6``, ``chunk_rwkv7``) and
fused recurrent kernels for decoding (``fused_recurrent_rwkv6``, ``fused_recurrent_rwkv7``). This
module maps our ops' conventions onto theirs, and nothing else:

- RWKV-5/6 (ops/wkv5.py): the same recurrence, state [key, value] in both; fla's ``w`` is our
  ``log_w`` and ``u`` our bonus. RWKV-5's static decay is passed per token like RWKV-6's, so one
  kernel serves both. ``log_w`` is clamped at ``FLA_MIN_LOG_DECAY`` (see there).
- RWKV-7 (ops/wkv7.py): fla's ``a``, ``b`` are our ``alpha``, ``beta`` and its state is ours
  transposed (fla: [key, value], ``o = S^T r``; ours: [value, key], ``y = S r``).
- fla scales r by ``scale``, by default ``1/sqrt(K)``: it is passed as 1.

Both ops take float32 inputs from the models; with float32 inputs the kernels' matrix products run
in TF32 (Triton's default on NVIDIA GPUs), ~1e-3 relative, where the PyTorch forms are exact
float32. The fused recurrent kernels have no backward for the state's gradient
(``fused_recurrent_rwkv7``: no backward at all; ``fused_recurrent_rwkv6``: its backward ignores the
final state's gradient, measured here), so the one-token step uses them only where no gradient is
wanted and falls back to the PyTorch step otherwise. Verified against the reference loops and the
PyTorch chunked forms (outputs, final state, every gradient) by tests/test_fla_kernels.py, on the
CPU under ``TRITON_INTERPRET=1`` and on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch
from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6
from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7
from torch import Tensor

from .registry import Backend
from .wkv5 import wkv5_step
from .wkv7 import wkv7_step

# RWKV-7's decay is at least e^-0.6066 per token (models/rwkv7.py); telling fla so licenses its
# tensor-core scheme with 64-token chunks (its gate_bound_is_safe), rounded outwards.
RWKV7_LOG_DECAY_BOUND = -0.607


# fla's chunked RWKV-6 kernel sums log-decays in float32 within a 64-token chunk, so a pair of
# tokens close in time but late in a chunk of huge decays loses ~ulp(|g|) of their relative weight:
# with trained RWKV-5/6 channels at -1e4 per token that measured 1.5e-4 relative error (2e-6 at
# -100). A token that keeps e^-60 = 9e-27 of the state has forgotten it in float32 anyway (the
# state's terms would need 1e19 times the new token's size to show), so the decay is clamped here:
# it bounds the chunk's sums at 64 * 60 nats, and changes no float32 result.
FLA_MIN_LOG_DECAY = -60.0


def _wants_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _no_autocast(x: Tensor) -> Any:
    """The kernels run in their inputs' precision, also inside a bf16 autocast region."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def wkv5_fla(
    r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, u: Tensor, state: Tensor, chunk_len: int = 0
) -> tuple[Tensor, Tensor]:
    """The T-token form: fla's chunked RWKV-6 kernel. Shapes as ``wkv5_chunked``; ``chunk_len`` is
    fla's own choice and the argument is unused."""
    with _no_autocast(r):
        y, new = chunk_rwkv6(
            r,
            k,
            v,
            log_w.clamp(min=FLA_MIN_LOG_DECAY),
            u,
            scale=1.0,
            initial_state=state,
            output_final_state=True,
        )
    return y, new


def wkv5_fla_step(
    r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, u: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One token, (B, H, N) inputs: fla's fused recurrent RWKV-6 kernel (the PyTorch step under autograd)."""
    if _wants_grad(r, log_w, k, v, u, state):
        return wkv5_step(r, log_w, k, v, u, state)
    log_w = log_w.clamp(min=FLA_MIN_LOG_DECAY).expand_as(r)  # RWKV-5's static decay is (H, N)
    r, k, v, log_w = (t[:, None] for t in (r, k, v, log_w))
    with _no_autocast(r):
        y, new = fused_recurrent_rwkv6(
            r, k, v, log_w, u, scale=1.0, initial_state=state, output_final_state=True
        )
    return y[:, 0], new


def wkv7_fla(
    r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, state: Tensor,
    chunk_len: int = 0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The T-token form: fla's chunked RWKV-7 kernel. Shapes as ``wkv7_chunked``; ``chunk_len``
    is unused (fla picks 64 for RWKV-7's bounded decay)."""
    with _no_autocast(r):
        y, new = chunk_rwkv7(
            r, log_w, k, v, alpha, beta, scale=1.0,
            initial_state=state.transpose(-1, -2), output_final_state=True,
            lower_bound=RWKV7_LOG_DECAY_BOUND,
        )  # fmt: skip
    return y, new.transpose(-1, -2)


def wkv7_fla_step(
    r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One token, (B, H, N) inputs: fla's fused recurrent RWKV-7 kernel (the PyTorch step under autograd)."""
    if _wants_grad(r, log_w, k, v, alpha, beta, state):
        return wkv7_step(r, log_w, k, v, alpha, beta, state)
    inputs = (t[:, None] for t in (r, log_w, k, v, alpha, beta))
    with _no_autocast(r):
        y, new = fused_recurrent_rwkv7(
            *inputs, scale=1.0, initial_state=state.transpose(-1, -2), output_final_state=True
        )
    return y[:, 0], new.transpose(-1, -2)


def load_wkv5_backend() -> Backend | None:
    """What the wkv5 registry loads on the first CUDA call (None: no usable GPU)."""
    return Backend("fla", step=wkv5_fla_step, sequence=wkv5_fla) if torch.cuda.is_available() else None


def load_wkv7_backend() -> Backend | None:
    """What the wkv7 registry loads on the first CUDA call (None: no usable GPU)."""
    return Backend("fla", step=wkv7_fla_step, sequence=wkv7_fla) if torch.cuda.is_available() else None
