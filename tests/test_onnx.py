"""ONNX export of the one-token step (rwkvkit/formats/onnx.py), run in onnxruntime against rwkvkit:
every version, 32 steps from the zero state with the state fed back through the graph's named
inputs and outputs, at two batch sizes (the batch is dynamic). Float32: logits and the final state
within 1e-4 (measured: at most ~6e-6)."""

from __future__ import annotations

import pytest
import torch
from cli_run import rwkvkit_cli

from rwkvkit.convert import convert
from rwkvkit.errors import RwkvkitError
from rwkvkit.models.gpt import GPTConfig
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.testing import (
    random_gpt,
    random_rwkv4_state_dict,
    random_rwkv5_state_dict,
    random_rwkv6_state_dict,
    random_rwkv7_state_dict,
    step_by_step,
)

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'rwkvkit[onnx]')")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'rwkvkit[onnx]')")

import rwkvkit  # noqa: E402
from rwkvkit.formats.onnx import export_onnx, run_onnx_steps  # noqa: E402

VOCAB = 97
CASES = {
    "4": (RWKV4Config(vocab_size=VOCAB, n_layer=2, n_embd=40, ffn_dim=72), random_rwkv4_state_dict),
    "5.0": (RWKV5Config(vocab_size=VOCAB, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, gate=False,
                        per_channel_decay=False, log_bonus=True), random_rwkv5_state_dict),
    "5.2": (RWKV5Config(vocab_size=VOCAB, n_layer=2, n_embd=32, ffn_dim=64, head_size=8), random_rwkv5_state_dict),
    "6": (RWKV6Config(vocab_size=VOCAB, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, mix_lora=4, decay_lora=6),
          random_rwkv6_state_dict),
    "7": (RWKV7Config(vocab_size=VOCAB, n_layer=2, n_embd=32, ffn_dim=64, head_size=8, decay_lora=4, iclr_lora=4,
                      value_lora=4, gate_lora=8), random_rwkv7_state_dict),
}  # fmt: skip
TOL = 1e-4


@pytest.mark.parametrize("name", list(CASES))
def test_onnxruntime_steps_like_rwkvkit(tmp_path, name: str) -> None:
    config, make = CASES[name]
    torch.save(make(config, seed=5), tmp_path / "m.pth")
    path = convert(tmp_path / "m.pth", tmp_path / "m.onnx", "onnx")
    onnx.checker.check_model(onnx.load(str(path)))
    model = rwkvkit.load_model(tmp_path / "m.pth")
    fields = list(model.initial_state(1).tensors())
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["token", *(f"state.{f}" for f in fields)]
    assert [o.name for o in graph.output] == ["logits", *(f"new_state.{f}" for f in fields)]
    for batch in (2, 1):
        tokens = torch.randint(0, VOCAB, (batch, 32), generator=torch.Generator().manual_seed(batch))
        got, state = run_onnx_steps(path, tokens)
        with torch.no_grad():
            want, want_state = step_by_step(model, tokens)
        torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
        for field, t in want_state.tensors().items():
            torch.testing.assert_close(state[field], t, atol=TOL, rtol=TOL, msg=field)


def test_only_rwkv_models_in_fp32(tmp_path) -> None:
    config, make = CASES["7"]
    torch.save(make(config), tmp_path / "m.pth")
    with pytest.raises(RwkvkitError, match="fp32"):
        convert(tmp_path / "m.pth", tmp_path / "m.onnx", "onnx", dtype="fp16")
    gpt = random_gpt(GPTConfig(vocab_size=VOCAB, n_layer=1, n_embd=16, n_head=2, ffn_dim=32, n_ctx=8))
    with pytest.raises(RwkvkitError, match="RWKV models"):
        export_onnx(gpt, tmp_path / "gpt.onnx")
    assert not (tmp_path / "gpt.onnx").exists()


def test_command_line_export(tmp_path) -> None:
    config, make = CASES["6"]
    torch.save(make(config, seed=1), tmp_path / "m.pth")
    rwkvkit_cli("convert", str(tmp_path / "m.pth"), str(tmp_path / "m.onnx"), "--to", "onnx")
    got, _ = run_onnx_steps(tmp_path / "m.onnx", torch.tensor([[3, 1, 4]]))
    with torch.no_grad():
        want, _ = step_by_step(rwkvkit.load_model(tmp_path / "m.pth"), torch.tensor([[3, 1, 4]]))
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
    bad = rwkvkit_cli("convert", str(tmp_path / "m.pth"), str(tmp_path / "x.onnx"), "--to", "onnx", "--dtype", "bf16",
                      check=False)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "rwkvkit convert: error: ONNX export writes fp32 weights; pass --dtype fp32"
    ]


@pytest.mark.slow
def test_torch_export_based_exporter_gives_the_same_graph(tmp_path) -> None:
    """torch's newer exporter (``dynamo=True``, onnxscript): the same interface and numbers."""
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    config, make = CASES["7"]
    torch.save(make(config, seed=5), tmp_path / "m.pth")
    model = rwkvkit.checkpoint.build_model(rwkvkit.checkpoint.read_checkpoint(tmp_path / "m.pth"))
    path = export_onnx(model, tmp_path / "m.onnx", dynamo=True)
    fields = list(model.initial_state(1).tensors())
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["token", *(f"state.{f}" for f in fields)]
    tokens = torch.randint(0, VOCAB, (3, 32), generator=torch.Generator().manual_seed(0))
    got, _ = run_onnx_steps(path, tokens)
    with torch.no_grad():
        want, _ = step_by_step(model, tokens)
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
