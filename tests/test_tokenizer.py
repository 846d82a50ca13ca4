"""Tokenizers: the World tokenizer must give the official `rwkv` package's ids on any text, the
fast path must give the reference's, and streaming must never emit half a character."""

from __future__ import annotations

import random
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path

from rwkvkit.errors import TokenizerError
from rwkvkit.tokenizer import (
    GPT20B_JSON_PATH,
    WORLD_VOCAB_PATH,
    ByteTokenizer,
    Gpt20BTokenizer,
    IncrementalDecoder,
    Tokenizer,
    WorldTokenizer,
    WorldTokenizerRef,
    _load_pyrwkv,
    _parse_world_vocab,
    load_tokenizer,
    tokenizer_name_for_vocab_size,
)

HARD_TEXTS = [
    "",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "def f(x):\n\tif x:\n\t\treturn {'a': [1, 2]}  # comment\n    else:\n        pass\n",
    "你好，世界！今天是美好的一天。日本語のテキスト、한국어 텍스트。",
    "👍 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇺🇳🇫🇷 🧑🏿‍💻 ❤️‍🔥 1️⃣",
    " " * 1 + "a" + " " * 2 + "b" + " " * 63 + "c" + " " * 64 + "d" + " " * 65 + "e" + " " * 200,
    "\t\t\t \t \n\n\n\n \n\t\n" * 5,
    "line one\r\nline two\r\n\r\n\rlone CR\n\r",
    "\x00\x00abc\x00\x01\x7f\x80\x9f\u00a0\u00ad",
    "e\u0301 vs \u00e9, Å vs A\u030a, ﬁ ligature, ＡＢＣ fullwidth",
    "العربية עברית русский ελληνικά हिन्दी ไทย",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙 \U0001f600\U0010ffff\ufeff\ufffd\uffff",
    "-" * 64 + "=" * 129 + "#" * 300 + "/" * 65 + "*" * 7,
    "<|endoftext|> User: hi\n\nAssistant: hello\n\n",
    "x" * 5000,
]


def _random_text(rng: random.Random, n: int) -> str:
    """A mix of ASCII, Latin, CJK, emoji, joiners and any code point except surrogates."""
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            out.append(chr(rng.randrange(0x20, 0x7F)))
        elif r < 0.45:
            out.append(chr(rng.randrange(0x80, 0x800)))
        elif r < 0.6:
            out.append(chr(rng.randrange(0x4E00, 0xA000)))
        elif r < 0.7:
            out.append(chr(rng.randrange(0x1F300, 0x1FB00)))
        elif r < 0.85:
            out.append(rng.choice([" ", "  ", "\t", "\n", "\r\n", "\x00", "\u200d", "\ufe0f"]))
        else:
            c = rng.randrange(0, 0x110000 - 0x800)
            out.append(chr(c + 0x800 if c >= 0xD800 else c))
    return "".join(out)


@pytest.fixture(scope="module")
def trie():
    """The official oracle, read from our packaged vocabulary (~3 s: it evals every line)."""
    rwkv_tokenizer = pytest.importorskip("rwkv.rwkv_tokenizer")
    return rwkv_tokenizer.TRIE_TOKENIZER(str(WORLD_VOCAB_PATH))


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    tok = load_tokenizer("world")
    assert isinstance(tok, WorldTokenizer)
    return tok


@pytest.fixture(scope="module")
def ref() -> WorldTokenizerRef:
    return WorldTokenizerRef()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rng = random.Random(1234)
    random_texts = [_random_text(rng, rng.randrange(1, 120)) for _ in range(300)]
    return HARD_TEXTS + random_texts


@pytest.fixture(scope="module")
def token_soup(ref: WorldTokenizerRef) -> list[str]:
    """Concatenations of random vocabulary tokens: where greedy matching has to choose."""
    rng = random.Random(99)
    valid = [t.decode("utf-8", errors="replace") for t in ref.vocab.values()]
    valid = [t for t in valid if "\ufffd" not in t]
    return ["".join(rng.choices(valid, k=rng.randrange(1, 40))) for _ in range(300)]


# --- World ------------------------------------------------------------------------------------


def test_world_basics(world: WorldTokenizer) -> None:
    assert isinstance(world, Tokenizer)
    assert (world.name, world.vocab_size, world.eos_id) == ("world", 65536, 0)
    assert load_tokenizer("world") is world  # loaded once per process
    assert world.decode([0]) == "" and world.decode_bytes([65530, 65535]) == b""


def test_world_matches_official_trie_tokenizer(world, ref, trie, texts, token_soup) -> None:
    for text in texts + token_soup:
        want = trie.encode(text)
        assert world.encode(text) == want, text
        assert ref.encode(text) == want, text
        assert world.decode(want) == text


def test_world_matches_official_on_hamlet_and_long_inputs(world, ref, trie) -> None:
    hamlet = shared_path("corpora", "shakespeare", "hamlet_gut.txt").read_text(encoding="utf-8")[:200_000]
    long_mixed = (HARD_TEXTS[3] + HARD_TEXTS[4] + " " * 70 + "\r\n") * 800  # ~130 KB, one string
    for text in (hamlet, long_mixed):
        want = trie.encode(text)
        assert world.encode(text) == want
        assert ref.encode(text) == want
        assert world.decode(want) == text


def test_every_token_encodes_to_itself_and_decodes_to_its_bytes(world, trie) -> None:
    assert world.vocab == trie.idx2token
    for idx, token in trie.idx2token.items():
        assert world.decode_bytes([idx]) == token
    everything = b"".join(trie.idx2token.values())  # ~400 KB with every token once
    assert world.encode_bytes(everything) == trie.encodeBytes(everything)


def test_invalid_utf8_bytes_and_lone_surrogates(world, ref, trie) -> None:
    rng = random.Random(7)
    for _ in range(50):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
        assert world.encode_bytes(data) == ref.encode_bytes(data) == trie.encodeBytes(data)
        assert world.decode_bytes(world.encode_bytes(data)) == data
    # The oracle cannot encode lone surrogates; neither path pretends otherwise.
    for text in ("\ud800", "a\udc00b", "\ud83d\ude00"):
        for encode in (trie.encode, world.encode, ref.encode):
            with pytest.raises(UnicodeEncodeError):
                encode(text)


def test_fast_path_is_used_and_falls_back_without_error(world, monkeypatch) -> None:
    pytest.importorskip("pyrwkv_tokenizer")
    assert world.backend == "pyrwkv-tokenizer"
    vocab, rust_readable = _parse_world_vocab(WORLD_VOCAB_PATH)
    assert rust_readable
    monkeypatch.setitem(sys.modules, "pyrwkv_tokenizer", None)  # as if not installed
    assert _load_pyrwkv(WORLD_VOCAB_PATH, vocab, rust_readable) is None


def _write_vocab(path: Path, extra: list[str]) -> Path:
    """A tiny World-format vocabulary: the 256 bytes, then `extra`, as the official file writes them."""
    lines = []
    for b in range(256):
        literal = repr(chr(b)) if b < 0x80 else repr(bytes([b]))
        lines.append(f"{b + 1} {literal} 1")
    for i, token in enumerate(extra, 257):
        lines.append(f"{i} {token!r} {len(token.encode())}")
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path


def test_custom_world_vocab_is_greedy(tmp_path: Path, trie) -> None:
    path = _write_vocab(tmp_path / "tiny.txt", ["ab", "abc", "bcd", " the", "é", "😀"])
    tok = load_tokenizer(path)
    assert isinstance(tok, WorldTokenizer) and tok.name == str(path) and tok.vocab_size == 320
    oracle = type(trie)(str(path))
    for text in ["abcd", "xabcd the", "😀é😁", "\r\n", *HARD_TEXTS[:6]]:
        assert tok.encode(text) == WorldTokenizerRef(path).encode(text) == oracle.encode(text)
    assert tok.encode("abcd") == [257 + 1, ord("d") + 1]  # greedy "abc"+"d", not "a"+"bcd"


def test_bad_world_vocab_files(tmp_path: Path) -> None:
    missing_byte = tmp_path / "missing.txt"
    missing_byte.write_text("1 'a' 1\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="256 single bytes"):
        WorldTokenizer(missing_byte)
    bad_line = _write_vocab(tmp_path / "bad.txt", [])
    bad_line.write_text(bad_line.read_text(encoding="utf-8") + "257 not-a-literal 3\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"bad.txt:257"):
        load_tokenizer(bad_line)
    wrong_length = _write_vocab(tmp_path / "len.txt", [])
    wrong_length.write_text(wrong_length.read_text(encoding="utf-8") + "257 'ab' 3\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="the line says 3"):
        load_tokenizer(wrong_length)


def test_decode_takes_arrays_and_rejects_bad_ids(world) -> None:
    ids = world.encode("Hello 😀")
    assert (
        world.decode(np.array(ids))
        == world.decode(torch.tensor(ids))
        == world.decode(iter(ids))
        == "Hello 😀"
    )
    for bad in ([65536], [-1]):
        with pytest.raises(TokenizerError, match="outside"):
            world.decode(bad)


# --- 20B, bytes, loading -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt20b():
    from tokenizers import Tokenizer as HFTokenizer

    return load_tokenizer("20b"), HFTokenizer.from_file(str(GPT20B_JSON_PATH))


def test_20b_matches_tokenizers(gpt20b, texts) -> None:
    tok, hf = gpt20b
    assert isinstance(tok, Gpt20BTokenizer) and isinstance(tok, Tokenizer)
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("20b", 50277, hf.token_to_id("<|endoftext|>"))
    assert tok.eos_id == 0
    for text in texts[:80]:
        ids = hf.encode(text).ids
        assert tok.encode(text) == ids
        assert tok.decode(ids) == hf.decode(ids)
    assert tok.encode("a<|endoftext|>b") == [66, 0, 67]  # special text -> special id, as upstream
    for text in texts:  # exact round trip, except where the JSON's NFC normaliser changes the text
        if unicodedata.is_normalized("NFC", text) and "<|endoftext|>" not in text:
            assert tok.decode(tok.encode(text)) == text


def test_20b_decode_matches_tokenizers_per_id_and_on_broken_utf8(gpt20b) -> None:
    tok, hf = gpt20b
    rng = random.Random(5)
    ids = list(range(0, 300)) + list(range(50200, 50277)) + rng.sample(range(50277), 2000)
    for i in ids:
        assert tok.decode([i]) == hf.decode([i]), i
    for _ in range(200):  # random sequences cut characters in half: same U+FFFD placement
        seq = rng.choices(range(50277), k=rng.randrange(1, 12))
        assert tok.decode(seq) == hf.decode(seq), seq


def test_byte_tokenizer() -> None:
    tok = load_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer) and isinstance(tok, Tokenizer)
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("byte", 256, 0)
    for text in HARD_TEXTS:
        assert tok.encode(text) == list(text.encode("utf-8"))
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode([0xE4, 0x41]) == "\ufffdA"
    with pytest.raises(TokenizerError, match="256"):
        tok.decode([256])


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="pass 'world', '20b' or 'byte'"):
        load_tokenizer("gpt2")
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.txt")
    with pytest.raises(TokenizerError, match="unknown tokenizer"):
        load_tokenizer(tmp_path / "model.bin")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="Hugging Face"):
        load_tokenizer(tmp_path / "broken.json")
    assert load_tokenizer("BYTE") is load_tokenizer("byte")
    assert load_tokenizer(GPT20B_JSON_PATH).name == "20b"


def test_tokenizer_name_for_vocab_size() -> None:
    assert [tokenizer_name_for_vocab_size(n) for n in (65536, 65530, 65529, 50277, 256)] == [
        "world",
        "world",
        "world",
        "20b",
        "byte",
    ]
    assert tokenizer_name_for_vocab_size(50304) is None and tokenizer_name_for_vocab_size(97) is None


# --- streaming ------------------------------------------------------------------------------------

STREAM_TEXTS = [HARD_TEXTS[3], HARD_TEXTS[4], HARD_TEXTS[11], "mixed 😀 text 你好 𝔘 done"]


@pytest.mark.parametrize("name", ["world", "byte", "20b"])
def test_incremental_decoder_one_id_at_a_time(name: str) -> None:
    tok = load_tokenizer(name)
    held_back = 0  # ids after which a character was incomplete: the case under test
    for text in STREAM_TEXTS:
        decoder = IncrementalDecoder(tok)
        pieces = [decoder.push(i) for i in tok.encode(text)] + [decoder.flush()]
        assert "".join(pieces) == text
        emitted = ""
        for piece in pieces:  # every prefix emitted so far is exact text: nothing broken came out
            emitted += piece
            assert text.startswith(emitted)
        held_back += sum(p == "" for p in pieces[:-1])
    assert held_back > 0


def test_incremental_decoder_equals_decode_on_random_bytes() -> None:
    tok = ByteTokenizer()
    rng = random.Random(11)
    for _ in range(200):
        ids = [rng.randrange(256) for _ in range(rng.randrange(0, 30))]
        decoder = IncrementalDecoder(tok)
        pieces = [decoder.push(i) for i in ids]
        assert "".join(pieces) + decoder.flush() == tok.decode(ids)
    decoder = IncrementalDecoder(tok)
    assert decoder.push([0xF0, 0x9F]) == "" and decoder.flush() == "\ufffd"
    assert decoder.push(np.array([0x41])) == "A"  # starts afresh after flush


def test_vocabulary_ids_are_bounded_before_the_table_is_made(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    lines = [f"{i + 1} {bytes([i])!r} 1" for i in range(256)] + ["1000000000000 'ab' 2"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TokenizerError, match="largest token id is 1000000000000"):
        load_tokenizer(path)


def test_generate_refuses_a_tokenizer_larger_than_the_model() -> None:
    import rwkvkit
    from rwkvkit.defaults import DEFAULT_MODEL

    model = rwkvkit.load_model(DEFAULT_MODEL)  # 256 ids
    with pytest.raises(TokenizerError, match="65536 tokens but the model only 256"):
        rwkvkit.generate_text(model, load_tokenizer("world"), "Hi", max_tokens=2)
