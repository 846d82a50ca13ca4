"""Generation (the text layer over the engine): chunked prefill, streaming text, stop strings and
ids, prefixes, batches, greedy decoding against the official ``rwkv`` package, and every RWKV
version through the same path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import rwkvkit
from rwkvkit.engine import prefill
from rwkvkit.errors import RwkvkitError, StateError
from rwkvkit.generate import Prefix, generate, generate_batch, generate_text, prefill_text
from rwkvkit.models.gpt import GPT, GPTConfig
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.models.rwkv5 import RWKV5Config
from rwkvkit.models.rwkv6 import RWKV6Config
from rwkvkit.models.rwkv7 import RWKV7Config
from rwkvkit.state import RecurrentState
from rwkvkit.statefile import load_state, save_state
from rwkvkit.testing import random_rwkv4, random_rwkv5, random_rwkv6, random_rwkv7
from rwkvkit.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def byte_tok():
    return load_tokenizer("byte")


@pytest.fixture(scope="module")
def byte_model() -> nn.Module:
    return random_rwkv4(RWKV4Config(vocab_size=256, n_layer=2, n_embd=48, ffn_dim=80, chunk_len=8), seed=5)


# --- a model that writes a fixed script, one byte per step, so text-level behaviour is exact ---


@dataclasses.dataclass
class ScriptState(RecurrentState):
    position: Tensor  # (1, B, 1): how many tokens were consumed


class ScriptModel(nn.Module):
    """Predicts ``script[position - prompt_len]``: whatever the prompt, it then types the script.
    The prompt ends where the last prompt-reading call (``last_only=True``) ended."""

    def __init__(self, script: list[int], vocab_size: int = 256) -> None:
        super().__init__()
        self.script, self.vocab_size = script, vocab_size
        self.dummy = nn.Parameter(torch.zeros(1))
        self.prompt_len = 0
        self.calls: list[int] = []

    def initial_state(self, batch: int = 1) -> ScriptState:
        return ScriptState(torch.zeros(1, batch, 1))

    def forward(
        self, tokens: Tensor, state: ScriptState | None = None, *, last_only: bool = False
    ) -> tuple[Tensor, ScriptState]:
        tokens = torch.as_tensor(tokens)
        tokens = tokens[None] if tokens.dim() == 1 else tokens
        B, T = tokens.shape
        self.calls.append(T)
        state = self.initial_state(B) if state is None else state
        pos = state.position + T
        if last_only:
            self.prompt_len = int(pos[0, 0, 0])
        logits = torch.full((B, T, self.vocab_size), -10.0)
        i = int(pos[0, 0, 0]) - self.prompt_len
        logits[:, -1, self.script[i] if i < len(self.script) else 0] = 10.0
        return (logits[:, -1:] if last_only else logits), ScriptState(pos)

    def step(self, tokens: Tensor, state: ScriptState) -> tuple[Tensor, ScriptState]:
        logits, state = self(tokens[:, None], state)
        return logits[:, -1], state


def scripted(text: str) -> ScriptModel:
    return ScriptModel(list(text.encode()) + [ord("~")] * 64)


def pieces_and_result(model: nn.Module, tok, prompt: str = "P", **kw):
    gen = generate(model, tok, prompt, temperature=0, **kw)
    pieces = list(gen)
    return pieces, gen.result


def test_streaming_never_splits_a_character(byte_tok) -> None:
    text = "héllo, 世界 🎉 Ωmega ✓"
    pieces, result = pieces_and_result(scripted(text), byte_tok, max_tokens=len(text.encode()))
    assert "".join(pieces) == text == result.text
    assert len(pieces) == len(text)  # one piece per character, each whole
    assert all("\ufffd" not in p for p in pieces)
    assert result.stop_reason == "max_tokens" and len(result.token_ids) == len(text.encode())


@pytest.mark.parametrize("name", ["world", "20b"])
def test_streaming_with_real_vocabularies_never_splits_a_character(name: str) -> None:
    tok = load_tokenizer(name)
    text = "Emoji 🎉🧑\u200d🚀, 中文字符 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢\r\n\tdone"
    ids = tok.encode(text)
    model = ScriptModel(ids, vocab_size=tok.vocab_size)
    pieces, result = pieces_and_result(model, tok, max_tokens=len(ids))
    assert "".join(pieces) == text == result.text and result.token_ids == ids
    assert all(p and "\ufffd" not in p for p in pieces)

    def whole_utf8(b: bytes) -> bool:
        try:
            b.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False

    assert not all(whole_utf8(tok.decode_bytes([i])) for i in ids)  # some tokens hold part of a character


def test_a_broken_byte_sequence_at_the_end_is_flushed_as_a_replacement(byte_tok) -> None:
    model = ScriptModel([ord("a"), 0xE4, 0xB8])  # "a" then 2 of the 3 bytes of 世
    pieces, result = pieces_and_result(model, byte_tok, max_tokens=3)
    assert result.text == "a\ufffd" and "".join(pieces) == result.text


def test_stop_string_split_across_tokens_is_never_emitted(byte_tok) -> None:
    pieces, result = pieces_and_result(scripted("abc<END>def"), byte_tok, stop=["<END>"], max_tokens=50)
    assert "".join(pieces) == "abc" == result.text
    assert result.stop_reason == "stop_string" and result.stop == "<END>"
    assert result.token_ids == list(b"abc<END>")  # the tokens that made the stop string


def test_a_false_start_of_a_stop_string_is_released(byte_tok) -> None:
    pieces, result = pieces_and_result(
        scripted("a<ENx<EN<END>z"), byte_tok, stop=["<END>", "Q"], max_tokens=50
    )
    assert result.text == "a<ENx<EN" == "".join(pieces)
    # text that may begin a stop string is held back until it cannot, then released at max_tokens
    pieces, result = pieces_and_result(scripted("ab<E"), byte_tok, stop=["<END>"], max_tokens=4)
    assert result.text == "ab<E" and result.stop_reason == "max_tokens"
    assert pieces[0] == "a" and "".join(pieces) == "ab<E"


def test_earliest_stop_string_wins_and_multibyte_stops_work(byte_tok) -> None:
    _, result = pieces_and_result(scripted("xx世界yy"), byte_tok, stop=["yy", "界"], max_tokens=50)
    assert result.text == "xx世" and result.stop == "界"


def test_stop_token_ids_and_max_tokens(byte_tok) -> None:
    model = ScriptModel([ord("h"), ord("i"), 3, ord("x")])
    _, result = pieces_and_result(model, byte_tok, stop_token_ids=[3], max_tokens=10)
    assert result.text == "hi" and result.stop_reason == "stop_token" and result.stop == 3
    assert result.token_ids == [104, 105]  # the stop id is not part of the output
    # by default the tokenizer's end-of-text id stops it (0 for the byte tokenizer)
    _, result = pieces_and_result(ScriptModel([ord("h"), 0, ord("x")]), byte_tok, max_tokens=10)
    assert result.text == "h" and result.stop_reason == "stop_token" and result.stop == byte_tok.eos_id == 0
    _, result = pieces_and_result(scripted("hello"), byte_tok, max_tokens=2)
    assert result.text == "he" and result.stop_reason == "max_tokens"
    _, result = pieces_and_result(scripted("hello"), byte_tok, max_tokens=0)
    assert result.text == "" and result.token_ids == []


def test_prefill_runs_in_bounded_chunks_and_equals_one_call(byte_model, byte_tok) -> None:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (1, 300), generator=gen)
    full_logits, full_state = byte_model(ids)
    for chunk in (5, 64, 5000):
        prefix = prefill(byte_model, ids, prefill_chunk=chunk)
        # the chunked parallel WKV and the recurrent path differ by float rounding only
        torch.testing.assert_close(prefix.logits, full_logits[:, -1], rtol=1e-4, atol=1e-4)
        for name, t in prefix.state.tensors().items():
            torch.testing.assert_close(t, full_state.tensors()[name], rtol=1e-4, atol=1e-4, msg=name)
        assert prefix.tokens == 300
    script = scripted("ok")
    prefill(script, list(range(100)) * 10, prefill_chunk=64)
    assert max(script.calls) == 64 and sum(script.calls) == 1000  # memory is bounded by the chunk
    script = scripted("ok")
    ids = list(range(1, 101)) * 3
    generate_text(script, load_tokenizer("byte"), ids, max_tokens=2, stop_token_ids=[], prefill_chunk=64)
    assert script.calls == [64, 64, 64, 64, 44, 1]  # the prompt in chunks, then one step per new token


def test_last_only_logits_are_the_last_row_of_all_logits(byte_model) -> None:
    ids = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(1))
    all_logits, state = byte_model(ids)
    last, state_last = byte_model(ids, last_only=True)
    assert last.shape == (2, 1, 256)
    # the same computation; only the head's matmul shape differs, which changes BLAS rounding (~1e-6)
    torch.testing.assert_close(last, all_logits[:, -1:], rtol=1e-5, atol=1e-5)
    for name, t in state.tensors().items():
        assert torch.equal(t, state_last.tensors()[name]), name


def test_greedy_equals_the_official_rwkv_package(small_pth: Path, byte_tok) -> None:
    """The official package's greedy loop (forward on the prompt, then one token at a time)."""
    from rwkv.model import RWKV as OfficialRWKV

    official = OfficialRWKV(str(small_pth), strategy="cpu fp32")
    prompt = [5, 17, 33, 2, 90, 41, 41, 7, 60, 3]
    expected, out, state = [], *official.forward(prompt, None)
    for _ in range(48):
        token = int(torch.argmax(out))
        expected.append(token)
        out, state = official.forward([token], state)
    ours = rwkvkit.load_model(small_pth)
    result = generate_text(ours, byte_tok, prompt, temperature=0, max_tokens=48, stop_token_ids=[])
    assert result.token_ids == expected


def test_seed_reproducibility(byte_model, byte_tok) -> None:
    kw = dict(max_tokens=40, temperature=1.0, top_p=0.9, presence_penalty=0.3, frequency_penalty=0.3)
    a = generate_text(byte_model, byte_tok, "Once upon", seed=11, **kw)
    b = generate_text(byte_model, byte_tok, "Once upon", seed=11, **kw)
    c = generate_text(byte_model, byte_tok, "Once upon", seed=12, **kw)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.token_ids != c.token_ids
    g = torch.Generator().manual_seed(11)
    assert generate_text(byte_model, byte_tok, "Once upon", generator=g, **kw).token_ids == a.token_ids


def test_a_prefix_is_reused_and_never_changed(byte_model, byte_tok) -> None:
    prompt = "The quick brown fox jumps over"
    prefix = prefill_text(byte_model, byte_tok, prompt)
    before = prefix.clone()
    direct = generate_text(byte_model, byte_tok, prompt, temperature=0, max_tokens=20)
    for _ in range(2):
        again = generate_text(byte_model, byte_tok, "", state=prefix, temperature=0, max_tokens=20)
        assert again.token_ids == direct.token_ids and again.prompt_tokens == 0
    split = prefill_text(byte_model, byte_tok, "The quick brown ")
    assert (
        generate_text(byte_model, byte_tok, "fox jumps over", state=split, temperature=0, max_tokens=20).text
        == direct.text
    )
    for name, t in prefix.state.tensors().items():
        assert torch.equal(t, before.state.tensors()[name]), name
    assert torch.equal(prefix.logits, before.logits)
    with pytest.raises(RwkvkitError, match="empty prompt"):
        generate_text(byte_model, byte_tok, "", state=prefix.state, max_tokens=3)


def test_kept_state_continues_the_text_exactly(byte_model, byte_tok) -> None:
    kw = dict(temperature=0, stop_token_ids=[])  # the byte tokenizer's end of text (0) must not cut it short
    whole = generate_text(byte_model, byte_tok, "Hello", max_tokens=30, **kw)
    first = generate_text(byte_model, byte_tok, "Hello", max_tokens=12, keep_state=True, **kw)
    rest = generate_text(byte_model, byte_tok, "", state=first.prefix(), max_tokens=18, **kw)
    assert first.token_ids + rest.token_ids == whole.token_ids
    assert first.prefix().tokens == 5 + 12
    # the kept state is the model's state after the prompt and every generated token
    _, expected = byte_model(list(b"Hello") + first.token_ids)
    torch.testing.assert_close(first.state.wkv_num, expected.wkv_num, rtol=1e-4, atol=1e-4)


def test_batch_of_ragged_prompts_equals_one_at_a_time(byte_model, byte_tok) -> None:
    prompts = ["a", "Hello there, how", "The rain in Spain falls", "xyz"]
    greedy = generate_batch(byte_model, byte_tok, prompts, temperature=0, max_tokens=16, stop=["e"])
    for p, r in zip(prompts, greedy, strict=True):
        alone = generate_text(byte_model, byte_tok, p, temperature=0, max_tokens=16, stop=["e"])
        assert (r.token_ids, r.text, r.stop_reason) == (alone.token_ids, alone.text, alone.stop_reason)
        assert r.prompt_tokens == len(p.encode())
    sampled = generate_batch(byte_model, byte_tok, prompts, seed=100, max_tokens=16, top_k=20)
    for i, (p, r) in enumerate(zip(prompts, sampled, strict=True)):
        assert (
            r.token_ids
            == generate_text(byte_model, byte_tok, p, seed=100 + i, max_tokens=16, top_k=20).token_ids
        )


def test_many_samples_from_one_prefix(byte_model, byte_tok) -> None:
    prefix = prefill_text(byte_model, byte_tok, "Samples:")
    results = generate_batch(byte_model, byte_tok, [""] * 4, state=prefix, seed=0, max_tokens=10)
    assert len({tuple(r.token_ids) for r in results}) > 1
    assert (
        results[2].token_ids
        == generate_text(byte_model, byte_tok, "", state=prefix, seed=2, max_tokens=10).token_ids
    )


def test_result_reports_timing_and_is_reachable_from_the_iterator(byte_model, byte_tok) -> None:
    gen = rwkvkit.generate(byte_model, byte_tok, "Timing", max_tokens=8, seed=0)
    assert gen.result is None
    text = "".join(gen)
    r = gen.result
    assert r is not None and r.text == text and gen.finish() is r
    assert r.prompt_tokens == 6 and r.prompt_tokens_per_s > 0 and r.generated_tokens_per_s > 0
    assert "tok/s" in r.stats()


def test_bad_arguments(byte_model, byte_tok) -> None:
    with pytest.raises(RwkvkitError, match="top_p"):
        generate_text(byte_model, byte_tok, "x", top_p=2.0)
    with pytest.raises(TypeError, match="tempreature"):
        generate_text(byte_model, byte_tok, "x", tempreature=1.0)
    with pytest.raises(RwkvkitError, match="max_tokens"):
        generate_text(byte_model, byte_tok, "x", max_tokens=-1)
    with pytest.raises(RwkvkitError, match="empty prompt"):
        generate_text(byte_model, byte_tok, "")
    assert isinstance(prefill_text(byte_model, byte_tok, "x"), Prefix)


@pytest.mark.slow
def test_100k_token_prompt(byte_model, byte_tok) -> None:
    ids = torch.randint(0, 256, (100_000,), generator=torch.Generator().manual_seed(0)).tolist()
    prefix = prefill(byte_model, ids, prefill_chunk=256)
    assert torch.isfinite(prefix.logits).all()
    assert all(torch.isfinite(t).all() for t in prefix.state.tensors().values())


def test_chunk_len_is_a_deprecated_alias_of_prefill_chunk(byte_tok) -> None:
    script = scripted("ok")
    with pytest.warns(DeprecationWarning, match="prefill_chunk"):
        result = generate_text(script, byte_tok, "x" * 20, max_tokens=2, chunk_len=8)
    assert result.text == "ok" and script.calls == [8, 8, 4, 1]
    with pytest.raises(TypeError, match="prefill_chunk only"):
        generate_text(script, byte_tok, "x", prefill_chunk=8, chunk_len=8)
    with pytest.warns(DeprecationWarning):
        prefix = prefill_text(script, byte_tok, "abc", chunk_len=2)
    assert prefix.tokens == 3


def test_kept_state_at_a_stop_string_has_read_the_stop_string(byte_model, byte_tok) -> None:
    kw = dict(temperature=0, stop_token_ids=[])
    full = generate_text(byte_model, byte_tok, "Hello", max_tokens=30, **kw).text
    stop = full[6:8]
    first = generate_text(byte_model, byte_tok, "Hello", max_tokens=30, stop=[stop], keep_state=True, **kw)
    assert first.stop_reason == "stop_string" and first.text == full[: full.index(stop)]
    expected = prefill(byte_model, list(b"Hello") + first.token_ids)  # the stop string's tokens included
    torch.testing.assert_close(first.logits, expected.logits, rtol=1e-4, atol=1e-4)
    for name, t in first.state.tensors().items():
        torch.testing.assert_close(t, expected.state.tensors()[name], rtol=1e-4, atol=1e-4, msg=name)


def test_a_fixed_context_model_stops_at_its_window(byte_tok) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        gpt = GPT(GPTConfig(vocab_size=256, n_layer=2, n_embd=32, n_head=2, ffn_dim=64, n_ctx=16)).eval()
    result = generate_text(gpt, byte_tok, "abcdef", max_tokens=100, stop_token_ids=[], keep_state=True)
    assert result.stop_reason == "context_full" and len(result.token_ids) == 16 - 6
    assert result.state.length == 16  # every position used, none past the window
    assert generate_text(gpt, byte_tok, "abcdef", max_tokens=3, stop_token_ids=[]).stop_reason == "max_tokens"
    with pytest.raises(RwkvkitError, match="context of 16"):
        generate_text(gpt, byte_tok, "x" * 17)


MODELS = {
    "5": lambda seed: random_rwkv5(
        RWKV5Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=64, head_size=16), seed
    ),
    "6": lambda seed: random_rwkv6(
        RWKV6Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=64, head_size=16), seed
    ),
    "7": lambda seed: random_rwkv7(
        RWKV7Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=64, head_size=16), seed
    ),
}


@pytest.mark.parametrize("version", sorted(MODELS))
def test_generate_and_state_files(version: str, tmp_path: Path) -> None:
    model, tok = MODELS[version](0), load_tokenizer("byte")
    prompt = "ROMEO: speak"
    whole = rwkvkit.generate_text(model, tok, prompt + " again", max_tokens=12, temperature=0)
    # The same greedy text from a saved-and-restored state after the first part of the prompt.
    first = rwkvkit.generate_text(model, tok, prompt, max_tokens=0, keep_state=True)
    path = save_state(
        tmp_path / "s.safetensors", first.state, model, tokens_consumed=len(prompt), logits=first.logits
    )
    saved = load_state(path, model)
    assert saved.tokens_consumed == len(prompt)
    with torch.no_grad():
        logits, state = model(tok.encode(" again"), saved.state)
    token_ids = []
    for _ in range(12):  # greedy by hand from the restored state
        nxt = int(logits[0, -1].argmax())
        token_ids.append(nxt)
        with torch.no_grad():
            logits, state = model([nxt], state)
    assert token_ids == whole.token_ids
    with pytest.raises(StateError):
        load_state(path, MODELS[version](1))  # same shapes, other weights


def test_a_prompt_that_is_not_utf8_text_is_refused_with_the_byte(byte_model, byte_tok) -> None:
    """Lone surrogates (what invalid UTF-8 becomes in a Python str) reach no tokenizer: every text path
    (generate, prefill_text, hence chat) goes through one check naming the byte and where it is."""
    from rwkvkit.errors import InputError

    with pytest.raises(InputError, match=r"the prompt is not valid UTF-8 text \(byte 0xff at character 2\)"):
        generate_text(byte_model, byte_tok, "hi\udcff")
    with pytest.raises(InputError, match="the prompt"):
        prefill_text(byte_model, byte_tok, "\udce9")
