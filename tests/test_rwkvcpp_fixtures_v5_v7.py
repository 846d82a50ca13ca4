"""rwkv.cpp's tiny trained RWKV-5.0 ("5v1"), 5.2 ("5v2"), 6 and 7 models reproduce the logits
rwkv.cpp produced for them, through ``rwkvkit.load_model``, in one call and token by token.

Tolerances (max abs logit difference, logits of size ~10-20): FP32 files must agree to float32
rounding (1e-5; measured <= 3.6e-6). FP16 and Q5 files are lossy: rwkv.cpp computed the expected
logits from the FP32 weights, so a quantized file can only come as close as its rounding allows.
Their bounds are the values an independent correct implementation measured (fixtures README) with
~25% headroom; a wrong transform or eps misses by far more (e.g. v5 with eps 64e-5: ~1.2 on FP32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import rwkvkit

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPT = [34, 105, 110]  # '"', 'i', 'n'
# (stem, expected-logits stem, format, model class, bound)
CASES = [
    ("tiny-rwkv-5v1-730K", "FP32", "RWKV5", 1e-5),
    ("tiny-rwkv-5v1-730K", "FP16", "RWKV5", 6e-3),
    ("tiny-rwkv-5v1-730K", "Q5_0", "RWKV5", 2.2),
    ("tiny-rwkv-5v1-730K", "Q5_1", "RWKV5", 0.35),
    ("tiny-rwkv-5v2-730K", "FP32", "RWKV5", 1e-5),
    ("tiny-rwkv-5v2-730K", "FP16", "RWKV5", 3.2e-3),
    ("tiny-rwkv-5v2-730K", "Q5_0", "RWKV5", 0.65),
    ("tiny-rwkv-5v2-730K", "Q5_1", "RWKV5", 0.47),
    ("tiny-rwkv-6v0-3m", "Q5_0", "RWKV6", 0.2),
    ("tiny-rwkv-6v0-3m", "Q5_1", "RWKV6", 0.1),
    ("tiny-rwkv-7v0-834K", "FP32", "RWKV7", 1e-5),
    ("tiny-rwkv-7v0-834K", "FP16", "RWKV7", 1e-5),  # v7's FP16 files keep the sensitive tensors FP32
    ("tiny-rwkv-7v0-834K", "Q5_0", "RWKV7", 5e-3),
    ("tiny-rwkv-7v0-834K", "Q5_1", "RWKV7", 5.5e-3),
]


@pytest.mark.parametrize(("stem", "fmt", "cls", "bound"), CASES, ids=[f"{c[0][10:13]}-{c[1]}" for c in CASES])
def test_fixture_reproduces_expected_logits(
    fixtures_dir: Path, stem: str, fmt: str, cls: str, bound: float
) -> None:
    path = fixtures_dir / f"{stem}-{fmt}.bin"
    expected_path = fixtures_dir / f"expected-logits-{stem.removeprefix('tiny-rwkv-')}.bin"
    if not path.exists() or not expected_path.exists():
        pytest.skip(f"{path.name} or {expected_path.name} is absent")
    expected = torch.from_numpy(np.fromfile(expected_path, dtype="<f4"))
    model = rwkvkit.load_model(path)
    assert type(model).__name__ == cls
    with torch.no_grad():
        whole, _ = model(PROMPT)
        state = None
        for token in PROMPT:
            last, state = model([token], state)
    assert (whole[0, -1] - expected).abs().max().item() <= bound
    assert (last[0, -1] - expected).abs().max().item() <= bound


def test_v5_files_run_with_rwkvcpp_eps(fixtures_dir: Path) -> None:
    """rwkv.cpp's eps is what makes its v5 logits come out; BlinkDL's misses them by ~1."""
    path = fixtures_dir / "tiny-rwkv-5v2-730K-FP32.bin"
    if not path.exists():
        pytest.skip(f"{path.name} is absent")
    model = rwkvkit.load_model(path)
    assert model.config.ln_x_eps == 1e-5
    raw = rwkvkit.checkpoint.read_checkpoint(path)
    raw.config_overrides = {}
    blinkdl_eps = rwkvkit.checkpoint.build_model(raw)
    assert blinkdl_eps.config.ln_x_eps == 64e-5
    expected = torch.from_numpy(np.fromfile(fixtures_dir / "expected-logits-5v2-730K.bin", dtype="<f4"))
    with torch.no_grad():
        assert (blinkdl_eps(PROMPT)[0][0, -1] - expected).abs().max() > 0.1
