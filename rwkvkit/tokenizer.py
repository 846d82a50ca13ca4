"""Tokenizers for RWKV models: one small interface and the three vocabularies RWKV models use.

- `WorldTokenizer` ("world"): the RWKV World vocabulary, greedy longest match over UTF-8 bytes.
  It must give the same ids as the `rwkv` package's `TRIE_TOKENIZER`, or models see text they
  were never trained on. `WorldTokenizerRef` is the plain Python reference; `WorldTokenizer`
  adds the Rust `pyrwkv-tokenizer` encoder when it is installed and agrees with the reference.
- `Gpt20BTokenizer` ("20b"): the GPT-NeoX-20B BPE of the RWKV-4 Pile models, via `tokenizers`.
- `ByteTokenizer` ("byte"): one id per byte, for tests and byte-level models.

Every tokenizer can decode to bytes, so that `IncrementalDecoder` can stream generated text
without splitting a multi-byte character across two tokens.
"""

from __future__ import annotations

import ast
import codecs
import functools
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import TokenizerError
from .fileio import os_problem

VOCAB_DIR = Path(__file__).parent / "data" / "vocab"
WORLD_VOCAB_PATH = VOCAB_DIR / "rwkv_vocab_v20230424.txt"
GPT20B_JSON_PATH = VOCAB_DIR / "20B_tokenizer.json"

BUILTIN_TOKENIZERS = ("world", "20b", "byte")

_HEX_BYTES_LITERAL = re.compile(r"b'(?:\\x[0-9a-fA-F]{2})+'")

_NAME_HINT = (
    "pass 'world', '20b' or 'byte', or the path of a World-format vocabulary .txt "
    "(lines 'id repr(token) byte_length'), of a Hugging Face tokenizers .json file or of a .gguf file"
)


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of rwkvkit needs from a tokenizer: text <-> ids, and ids -> raw bytes."""

    name: str  # what `load_tokenizer` takes to build this tokenizer again
    vocab_size: int  # rows of the model's embedding, which may exceed the ids in use
    eos_id: int  # end of text / document separator

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...


# A vocabulary's ids may skip a few numbers, but its largest id sizes the decoding table: a file
# whose ids go far beyond its number of tokens is refused before that table is made.
MAX_ID_SLACK = 4096


def check_id_range(largest: int, count: int, where: str) -> None:
    """Refuse a vocabulary of ``count`` tokens whose largest id is absurdly large (a 1e12 id
    would otherwise allocate a terabyte-sized table)."""
    if largest >= 2 * count + MAX_ID_SLACK:
        raise TokenizerError(
            f"{where}: the largest token id is {largest}, but the vocabulary has only {count} tokens; "
            "its ids must run from 0 (or 1) to about the number of tokens"
        )


def check_vocab_fits(tokenizer: Tokenizer, model: Any) -> None:
    """Refuse a tokenizer that can produce ids a model has no embedding for (``model``: a model
    with ``config.vocab_size``, or the vocabulary size itself)."""
    vocab = model if isinstance(model, int) else getattr(getattr(model, "config", None), "vocab_size", None)
    size = getattr(tokenizer, "vocab_size", None)
    if vocab is not None and size is not None and size > vocab:
        raise TokenizerError(
            f"the {getattr(tokenizer, 'name', '')} tokenizer has {size} tokens but the model only {vocab}; "
            "pass the model's own tokenizer with --tokenizer"
        )


def _as_id_list(ids: Any) -> list[int]:
    """Accept a list, any iterable, a numpy array or a torch tensor of ids, or a single id."""
    if hasattr(ids, "tolist"):  # numpy / torch, including 0-d ones, which give a plain int
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return ids if isinstance(ids, list) else list(ids)


class _TableDecoder:
    """Decoding shared by the tokenizers whose every id stands for a fixed byte string."""

    name: str
    _table: list[bytes]  # index = token id; unused ids map to b""

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of `ids`; they may end inside a multi-byte UTF-8 character."""
        ids = _as_id_list(ids)
        table = self._table
        try:
            if ids and min(ids) < 0:  # a negative index would silently read from the end
                raise IndexError
            return b"".join([table[i] for i in ids])
        except IndexError:
            bad = next(i for i in ids if not 0 <= i < len(table))
            raise TokenizerError(
                f"token id {bad} is outside the {self.name!r} vocabulary (ids 0..{len(table) - 1}); "
                "check that the ids come from a model that uses this tokenizer"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; invalid UTF-8 (e.g. a character cut in half) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# RWKV World


def read_world_vocab(path: str | os.PathLike[str]) -> dict[int, bytes]:
    """Parse a World-format vocabulary: lines `id repr(token) byte_length`, token a str or bytes literal.

    Checks what greedy matching relies on: ids >= 1 (0 is end of text), no duplicate ids or
    tokens, lengths as stated, and every single byte present (so any input can be encoded).
    """
    return _parse_world_vocab(Path(path))[0]


def _parse_world_vocab(path: Path) -> tuple[dict[int, bytes], bool]:
    """`read_world_vocab`, plus whether every literal is written the way pyrwkv-tokenizer's
    parser reads it: str tokens as Python's repr writes them (without \\U escapes), bytes
    tokens as \\x escapes only. Its parser panics on other forms."""
    try:
        # Universal newlines, then "\n" only, as the rwkv package reads the file.
        lines = path.read_text(encoding="utf-8").split("\n")
    except OSError as e:
        raise TokenizerError(f"cannot read World vocabulary {path}: {os_problem(e)}") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(
            f"World vocabulary {path} is not valid UTF-8 (byte offset {e.start}); {_NAME_HINT}"
        ) from None
    vocab: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    rust_readable = True
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        first, last = line.find(" "), line.rfind(" ")
        literal = line[first + 1 : last]
        try:
            idx, length, value = int(line[:first]), int(line[last + 1 :]), _literal_value(literal)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise TokenizerError(
                f"{path}:{lineno}: expected 'id repr(token) byte_length', got {line[:80]!r}; {_NAME_HINT}"
            ) from None
        if isinstance(value, str):
            token = value.encode("utf-8")
            rust_readable = rust_readable and literal == repr(value) and "\\U" not in literal
        else:
            token = value
            rust_readable = rust_readable and _HEX_BYTES_LITERAL.fullmatch(literal) is not None
        if idx < 1:
            raise TokenizerError(f"{path}:{lineno}: id {idx} < 1; id 0 is reserved for end of text")
        if len(token) != length or not token:
            raise TokenizerError(f"{path}:{lineno}: token is {len(token)} bytes, the line says {length}")
        if idx in vocab or token in seen:
            raise TokenizerError(f"{path}:{lineno}: duplicate id {idx} or token {token!r}")
        vocab[idx] = token
        seen[token] = idx
    if vocab:
        check_id_range(max(vocab), len(vocab), str(path))
    _check_single_bytes(seen, path)
    return vocab, rust_readable


def _check_single_bytes(tokens: Iterable[bytes], where: object) -> None:
    """Greedy matching always advances only if every single byte is a token."""
    present = set(tokens)
    missing = [b for b in range(256) if bytes([b]) not in present]
    if missing:
        raise TokenizerError(
            f"{where}: single bytes {missing[:8]} are not tokens, so some text could not be encoded; "
            "a World vocabulary must contain all 256 single bytes"
        )


def _literal_value(literal: str) -> str | bytes:
    """The value of a str or bytes literal, without evaluating anything.

    99% of the lines are a quoted run with no backslash and no inner quote, whose value is the
    run itself; only the rest go to ast.literal_eval, which would take ~0.6 s for all of them.
    """
    quote = literal[:1]
    body = literal[1:-1]
    if (
        quote in ("'", '"')
        and len(literal) >= 2
        and literal[-1] == quote
        and "\\" not in body
        and quote not in body
    ):
        return body
    value = ast.literal_eval(literal)
    if not isinstance(value, (str, bytes)):
        raise ValueError(f"{literal!r} is not a str or bytes literal")
    return value


class WorldTokenizerRef(_TableDecoder):
    """RWKV World tokenizer in plain Python: the reference the fast path is checked against.

    Encoding is greedy: at each position take the longest vocabulary token that the remaining
    UTF-8 bytes start with. No normalisation, no merges; id 0 (end of text) is never produced
    and decodes to nothing. About 3 MB/s; `WorldTokenizer` is the one to use.
    """

    eos_id = 0

    def __init__(
        self, vocab_path: str | os.PathLike[str] | None = None, vocab_size: int | None = None
    ) -> None:
        self.path = Path(WORLD_VOCAB_PATH if vocab_path is None else vocab_path)
        is_bundled = vocab_path is None or self.path.resolve() == WORLD_VOCAB_PATH.resolve()
        self.name = "world" if is_bundled else str(self.path)
        self.vocab, self._rust_readable = _parse_world_vocab(self.path)
        self._build_table(vocab_size)

    @classmethod
    def from_vocab(cls, vocab: dict[int, bytes], *, name: str, vocab_size: int | None = None) -> Any:
        """A World tokenizer over a vocabulary given as id -> bytes (e.g. a GGUF file's metadata);
        ``name`` is what `load_tokenizer` takes to build it again."""
        if not vocab or min(vocab) < 1 or len(set(vocab.values())) != len(vocab) or not all(vocab.values()):
            raise TokenizerError(
                f"{name}: a World vocabulary needs distinct, non-empty tokens with ids from 1"
            )
        _check_single_bytes(vocab.values(), name)
        self = cls.__new__(cls)
        self.path, self.name, self.vocab, self._rust_readable = None, name, dict(vocab), False
        self._build_table(vocab_size)
        return self

    def _build_table(self, vocab_size: int | None) -> None:
        # Models round the embedding up to a multiple of 64 rows: 65530 ids -> 65536.
        self.vocab_size = vocab_size or -(-(max(self.vocab) + 1) // 64) * 64
        if self.vocab_size <= max(self.vocab):
            raise TokenizerError(f"vocab_size {vocab_size} is too small for ids up to {max(self.vocab)}")
        self._table = [b""] * self.vocab_size
        for idx, token in self.vocab.items():
            self._table[idx] = token

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"

    @functools.cached_property
    def _trie(self) -> tuple[list[dict[int, int]], list[int]]:
        """Byte trie as two lists indexed by node number (root = 0): children by next byte, and
        the id of the token that ends at the node (0: none, since id 0 is never a token)."""
        children: list[dict[int, int]] = [{}]
        token_at: list[int] = [0]
        for idx, token in self.vocab.items():
            node = 0
            for byte in token:
                nxt = children[node].get(byte)
                if nxt is None:
                    nxt = len(children)
                    children[node][byte] = nxt
                    children.append({})
                    token_at.append(0)
                node = nxt
            token_at[node] = idx
        return children, token_at

    def encode(self, text: str) -> list[int]:
        """Ids of `text`. Lone surrogates raise UnicodeEncodeError, as in the `rwkv` package."""
        return self.encode_bytes(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> list[int]:
        """Ids of any byte string, valid UTF-8 or not."""
        children, token_at = self._trie
        ids: list[int] = []
        start, n = 0, len(data)
        while start < n:
            # Walk down the trie as far as the input allows, remembering the last node that
            # ends a token: that is the longest match. All single bytes are tokens, so it
            # always advances.
            node, pos, best_id, best_end = 0, start, 0, start
            while pos < n:
                node = children[node].get(data[pos], 0)
                if node == 0:
                    break
                pos += 1
                if token_at[node]:
                    best_id, best_end = token_at[node], pos
            ids.append(best_id)
            start = best_end
        return ids


def _load_pyrwkv(path: Path, vocab: dict[int, bytes], rust_readable: bool) -> Any | None:
    """The `pyrwkv-tokenizer` encoder for this vocabulary, or None if it is absent or would
    not match the reference.

    Its Rust parser handles what the official vocabulary holds (ids < 2**16, literals as
    Python's repr writes them) and panics on other lines, so other files stay on the
    reference. On top, every token that is valid UTF-8 must encode to exactly its own id
    (~40 ms), which catches any token the parser read differently.
    """
    try:
        import pyrwkv_tokenizer
    except ImportError:
        return None
    if not rust_readable or max(vocab) >= 2**16:
        return None
    texts: list[str] = []
    ids: list[int] = []
    for idx, token in vocab.items():
        try:
            texts.append(token.decode("utf-8"))
            ids.append(idx)
        except UnicodeDecodeError:
            continue  # a piece of a character: exercised by the tests, not checkable here
    fast = pyrwkv_tokenizer.WorldTokenizer(str(path))
    if fast.encode_batch(texts) != [[i] for i in ids]:
        return None
    return fast


class WorldTokenizer(WorldTokenizerRef):
    """RWKV World tokenizer: the reference, with `pyrwkv-tokenizer` (Rust) encoding when available.

    `backend` says which encoder runs: "pyrwkv-tokenizer" (~25-35 MB/s) or "python" (the
    reference, ~3 MB/s), used when the package is missing or disagrees with the reference on
    this vocabulary. Both give the ids of the `rwkv` package's TRIE_TOKENIZER. Decoding is
    always the Python table lookup: pyrwkv-tokenizer panics on ids that end inside a character.
    """

    _fast: Any = None  # what from_vocab leaves: the reference encoder
    backend = "python"

    def __init__(
        self,
        vocab_path: str | os.PathLike[str] | None = None,
        vocab_size: int | None = None,
        *,
        use_fast: bool = True,
    ) -> None:
        super().__init__(vocab_path, vocab_size)
        self._fast = _load_pyrwkv(self.path, self.vocab, self._rust_readable) if use_fast else None
        self.backend = "python" if self._fast is None else "pyrwkv-tokenizer"

    def encode(self, text: str) -> list[int]:
        """Ids of `text`. Lone surrogates raise UnicodeEncodeError, as in the `rwkv` package."""
        if self._fast is None:
            return super().encode(text)
        return self._fast.encode(text)

    def encode_bytes(self, data: bytes) -> list[int]:
        """Ids of any byte string; the fast path takes only valid UTF-8."""
        if self._fast is not None:
            try:
                return self._fast.encode(data.decode("utf-8"))
            except UnicodeDecodeError:
                pass
        return super().encode_bytes(data)


# --------------------------------------------------------------------------------------------
# Hugging Face tokenizers (GPT-NeoX 20B)


@functools.cache
def _byte_level_decoder() -> dict[str, int]:
    """The GPT-2 byte-level alphabet, reversed: each of 256 printable characters -> its byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    byte_to_char = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in byte_to_char):
        byte_to_char[b] = chr(256 + n)
    return {c: b for b, c in byte_to_char.items()}


class HFTokenizer(_TableDecoder):
    """A Hugging Face `tokenizers` JSON tokenizer.

    Encoding is the library's, so the text is normalised as the JSON says (NFC for 20B) and
    special-token text such as "<|endoftext|>" becomes the special id, as in the official RWKV
    pipeline. For byte-level BPE (GPT-2 style) decoders, decoding maps ids to bytes here, which
    is what streaming needs and gives the library's text (special tokens skipped). Other
    decoders go through the library, and their bytes are the UTF-8 of its text.
    """

    def __init__(
        self, path: str | os.PathLike[str], name: str | None = None, eos_id: int | None = None
    ) -> None:
        from tokenizers import Tokenizer as _HFTokenizer

        self.path = Path(path)
        self.name = name or str(self.path)
        try:
            self._hf = _HFTokenizer.from_file(str(self.path))
        except Exception as e:  # the library raises plain Exception on bad files
            raise TokenizerError(
                f"cannot load {self.path} as a Hugging Face tokenizers JSON file: {e}"
            ) from None
        ids = self._hf.get_vocab(with_added_tokens=True).values()
        check_id_range(max(ids, default=0), len(ids), str(self.path))
        # Ids may skip numbers: the size is the largest id + 1, what a model's embedding needs.
        self.vocab_size = max(self._hf.get_vocab_size(with_added_tokens=True), max(ids, default=-1) + 1)
        if eos_id is None:
            found = (self._hf.token_to_id(t) for t in ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"))
            eos_id = next((i for i in found if i is not None), None)
            if eos_id is None:
                raise TokenizerError(f"{self.path}: no end-of-text token found; pass eos_id")
        self.eos_id = eos_id
        self._table = self._byte_table()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"

    def _byte_table(self) -> list[bytes]:
        """id -> bytes for byte-level decoders; [] for the others (decoded by the library)."""
        from tokenizers.decoders import ByteLevel

        if not isinstance(self._hf.decoder, ByteLevel):
            return []
        char_to_byte = _byte_level_decoder()
        special = {i for i, t in self._hf.get_added_tokens_decoder().items() if t.special}
        table = [b""] * self.vocab_size
        for token, idx in self._hf.get_vocab(with_added_tokens=True).items():
            if idx not in special:  # special tokens decode to nothing, as in the library
                # Added tokens are plain text: characters outside the alphabet stand for
                # themselves, as in the library's ByteLevel decoder.
                table[idx] = b"".join(
                    bytes([char_to_byte[c]]) if c in char_to_byte else c.encode("utf-8") for c in token
                )
        return table

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, with no special tokens added around it."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Raw bytes of `ids`: exact for byte-level decoders, the UTF-8 of the text otherwise."""
        if self._table:
            return super().decode_bytes(ids)
        return self.decode(ids).encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens skipped; invalid UTF-8 becomes U+FFFD."""
        if self._table:
            return super().decode(ids)
        return self._hf.decode(_as_id_list(ids))


class Gpt20BTokenizer(HFTokenizer):
    """The GPT-NeoX-20B tokenizer of the RWKV-4 Pile models (50277 ids, end of text = 0)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        path = Path(GPT20B_JSON_PATH if path is None else path)
        is_bundled = path.resolve() == GPT20B_JSON_PATH.resolve()
        super().__init__(path, name="20b" if is_bundled else str(path))


# --------------------------------------------------------------------------------------------
# Bytes


class ByteTokenizer(_TableDecoder):
    """Token id = byte value: no vocabulary file, exact on any text. For tests and byte models.

    `eos_id` is 0, the NUL byte, as World's end of text is 0: NUL is all but absent from real
    text, so a generation loop that stops on eos_id stops where a model trained with NUL as
    document separator ends a document. Decoding 0 still gives b"\\x00", so that
    encode/decode round-trips every string, NULs included.
    """

    name = "byte"
    vocab_size = 256
    eos_id = 0

    def __init__(self) -> None:
        self._table = [bytes([b]) for b in range(256)]

    def __repr__(self) -> str:
        return "ByteTokenizer()"

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of `text` as ids."""
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes themselves; bytes() checks the range."""
        ids = _as_id_list(ids)
        try:
            return bytes(ids)
        except ValueError:
            return super().decode_bytes(ids)  # raises the TokenizerError naming the bad id


# --------------------------------------------------------------------------------------------
# Choosing a tokenizer


@functools.cache
def _builtin(name: str) -> Tokenizer:
    """The built-in tokenizers are loaded once per process: the World table takes ~0.5 s."""
    if name == "world":
        return WorldTokenizer()
    if name == "20b":
        return Gpt20BTokenizer()
    return ByteTokenizer()


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Tokenizer:
    """A tokenizer by name ("world", "20b", "byte") or from a World .txt or tokenizers .json file, or
    the one in a GGUF file's metadata."""
    key = os.fspath(name_or_path)
    if key.lower() in BUILTIN_TOKENIZERS:
        return _builtin(key.lower())
    path = Path(key).expanduser()
    try:
        is_gguf = path.is_file() and _starts_with(path, b"GGUF")
    except OSError as e:
        raise TokenizerError(f"tokenizer file {path}: {os_problem(e)}") from None
    if is_gguf:  # a GGUF file, whatever its name
        from .formats.gguf import gguf_vocabulary

        vocab = gguf_vocabulary(path)
        return WorldTokenizer.from_vocab(vocab, name=str(path), vocab_size=max(vocab) + 1)
    if path.suffix.lower() not in (".txt", ".json"):
        raise TokenizerError(f"unknown tokenizer {key!r}: {_NAME_HINT}")
    try:
        if not path.is_file():
            problem = "is not a regular file" if path.exists() else "does not exist"
            raise TokenizerError(f"tokenizer file {path} {problem}: {_NAME_HINT}")
    except OSError as e:
        raise TokenizerError(f"tokenizer file {path}: {os_problem(e)}") from None
    if path.suffix.lower() == ".txt":
        return WorldTokenizer(path)
    if path.resolve() == GPT20B_JSON_PATH.resolve():
        return Gpt20BTokenizer(path)
    return HFTokenizer(path)


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def tokenizer_name_for_vocab_size(vocab_size: int) -> str | None:
    """The built-in tokenizer a model with this many embedding rows was trained with, if any.

    50304 is left out on purpose: GPT-2-tokenizer models pad 50257 to it, and RWKV-4 Pile
    models use 50277 rows unpadded.
    """
    if vocab_size in (65536, 65530, 65529):
        return "world"
    if vocab_size == 50277:
        return "20b"
    if vocab_size == 256:
        return "byte"
    return None


# --------------------------------------------------------------------------------------------
# Streaming


class IncrementalDecoder:
    """Turns token ids, pushed as they are generated, into text that never splits a character.

    A token may end inside a multi-byte UTF-8 character (World and 20B both split emoji and
    rare CJK across tokens), so `push` holds an incomplete tail back until the next ids
    complete it. Bytes that can never become valid UTF-8 come out as U+FFFD at once.
    Joining every `push` and the final `flush` gives `tokenizer.decode(all_ids)`.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: int | Iterable[int]) -> str:
        """The text completed by `ids` (one id or several); may be ""."""
        return self._utf8.decode(self.tokenizer.decode_bytes(_as_id_list(ids)))

    def flush(self) -> str:
        """Whatever is held back (an incomplete character comes out as U+FFFD); then start afresh."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
