"""``rwkvkit serve --adapter NAME=PATH --state NAME=PATH``: each tuned variant is its own model in
``/v1/models`` on the one loaded base, and answers greedily what the same adapter or state gives in
process; bad specs are one-line errors before anything is served."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from serve_server import ServerProcess, serve
from test_cli_serve import one_line_error, serve_main
from tuned_models import randomize_lora_

import rwkvkit
from rwkvkit.checkpoint import build_model, read_checkpoint
from rwkvkit.defaults import DEFAULT_MODEL
from rwkvkit.statefile import ModelIdentity, save_state
from rwkvkit.tokenizer import ByteTokenizer

pytest.importorskip("peft")
from rwkvkit.lora import LoraSettings, adapter_view, add_lora, save_adapter  # (peft is optional)

TOK = ByteTokenizer()
PROMPT = "KING HENRY:\nO"


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An adapter for the bundled model (random B, so it changes the model) and a state file of it
    (the state after a few lines of text: a stand-in for a tuned state, read the same way)."""
    d = tmp_path_factory.mktemp("tuned")
    model = build_model(read_checkpoint(DEFAULT_MODEL))
    identity = ModelIdentity.of(model)
    peft_model = add_lora(model, LoraSettings(rank=4))
    randomize_lora_(model, seed=5)
    adapter = save_adapter(peft_model, d / "adapter", identity)
    base = rwkvkit.load_model(DEFAULT_MODEL)
    ids = TOK.encode("Now is the winter of our discontent\nMade glorious summer by this sun of York;\n")
    with torch.no_grad():
        _, state = base(torch.tensor([ids]))
    save_state(d / "york.safetensors", state, base, tokens_consumed=len(ids))
    return adapter, d / "york.safetensors"


@pytest.fixture(scope="module")
def server(parts: tuple[Path, Path]) -> ServerProcess:
    adapter, state = parts
    yield from serve("--adapter", f"lora-a={adapter}", "--state", f"york={state}")


def greedy(model: torch.nn.Module) -> str:
    return rwkvkit.generate_text(model, TOK, PROMPT, max_tokens=16, temperature=0).text


def test_each_variant_is_a_model_with_its_own_answers(
    server: ServerProcess, parts: tuple[Path, Path]
) -> None:
    adapter, state = parts
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["rwkvkit-default", "york", "lora-a"]
    assert [m.model_dump()["kind"] for m in models.data] == ["base", "state", "adapter"]
    got = {
        name: server.client()
        .completions.create(model=name, prompt=PROMPT, max_tokens=16, temperature=0)
        .choices[0]
        .text
        for name in ("rwkvkit-default", "york", "lora-a")
    }
    base = rwkvkit.load_model(DEFAULT_MODEL)
    with torch.no_grad():
        want = {
            "rwkvkit-default": greedy(base),
            "york": greedy(rwkvkit.load_model(DEFAULT_MODEL, state=state)),
            "lora-a": greedy(adapter_view(base, adapter)),
        }
    assert got == want
    assert len(set(got.values())) == 3  # each variant answers otherwise


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--adapter", "nameless"], "is not NAME=PATH"),
        (["--state", "=x.safetensors"], "is not NAME=PATH"),
        (["--adapter", "a=/nonexistent/adapter"], "not a LoRA adapter"),
        (["--state", "s=/nonexistent/state.safetensors"], "no such state file"),
    ],
)
def test_bad_variants_fail_in_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    one_line_error(*serve_main(capsys, "--port", "0", *args), words)


def test_a_name_served_twice_fails_in_one_line(
    capsys: pytest.CaptureFixture[str], parts: tuple[Path, Path]
) -> None:
    _, state = parts
    code, err = serve_main(capsys, "--port", "0", "--state", f"york={state}", "--state", f"york={state}")
    one_line_error(code, err, "a model named 'york' is already served")
    code, err = serve_main(capsys, "--port", "0", "--state", f"rwkvkit-default={state}")
    one_line_error(code, err, "already served")
