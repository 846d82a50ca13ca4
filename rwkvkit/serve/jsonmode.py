"""JSON mode (``response_format: {"type": "json_object"}``): only tokens that keep the output a
prefix of one JSON object may be sampled, and the row ends when the object closes.

:class:`JsonPrefix` is a byte-level pushdown recognizer of JSON (RFC 8259) fed one byte at a
time; :class:`JsonObjectConstraint` is the engine's per-row token constraint built on it: before
each token it masks the logits of the tokens whose bytes the recognizer would refuse. A small
vocabulary (a byte model's 256) is checked whole at every step. Checking every token of a
65,536-token vocabulary would cost more than the model, so there the candidates are checked from
the most likely down until the checked ones hold 99.9% of the probability (or 256 were checked)
and at least one fits, and the tokens the request's ``logit_bias`` raises are always checked;
the others are masked.

Whitespace between values is limited to one character at a time, so a model cannot fill its
budget with blanks and a chat's blank-line turn end cannot occur inside the object.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor

# What the recognizer expects next.
VALUE, FIRST_VALUE, KEY, FIRST_KEY, COLON, AFTER, STRING, NUMBER, LITERAL, DONE = range(10)
# Inside a number: the part read last.
N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP = range(8)
N_COMPLETE = {N_ZERO, N_INT, N_FRAC, N_EXP}  # a number may end here
WHITESPACE = frozenset(b" \t\n\r")
DIGITS = frozenset(b"0123456789")
HEX = frozenset(b"0123456789abcdefABCDEF")
ESCAPES = frozenset(b'"\\/bfnrtu')
LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}


class JsonPrefix:
    """Reads bytes; :meth:`feed` says whether they still form the start of a JSON object."""

    __slots__ = ("aux", "in_key", "literal", "mode", "space", "stack")

    def __init__(self) -> None:
        self.mode = VALUE  # the top level must be an object (checked in _value)
        self.stack: tuple[int, ...] = ()  # open containers: ord("{") or ord("[")
        self.in_key = False  # the string being read is an object key
        self.aux = 0  # in a string: 0, or 1 after a backslash, or 2..5 hex digits still due; in a number: N_*
        self.literal = b""  # the rest of true/false/null still due
        self.space = False  # the last byte was whitespace between values

    def copy(self) -> JsonPrefix:
        other = JsonPrefix.__new__(JsonPrefix)
        other.mode, other.stack, other.in_key = self.mode, self.stack, self.in_key
        other.aux, other.literal, other.space = self.aux, self.literal, self.space
        return other

    @property
    def done(self) -> bool:
        return self.mode == DONE

    def feed(self, data: bytes) -> bool:
        """Read ``data``; False (and a state not to be used further) if it cannot continue JSON."""
        return all(self._byte(b) for b in data)

    def _byte(self, b: int) -> bool:
        mode = self.mode
        if mode == STRING:
            return self._string(b)
        if mode == NUMBER:
            ok, consumed = self._number(b)
            if consumed or not ok:
                return ok
            mode = self.mode  # the number ended: b is read as what follows a value
        if mode == LITERAL:
            if not self.literal or b != self.literal[0]:
                return False
            self.literal = self.literal[1:]
            if not self.literal:
                self._value_done()
            return True
        if mode == DONE:
            return False
        if b in WHITESPACE:
            if self.space:
                return False
            self.space = True
            return True
        self.space = False
        if mode in (VALUE, FIRST_VALUE):
            if mode == FIRST_VALUE and b == ord("]"):
                return self._close(b)
            return self._value(b)
        if mode in (KEY, FIRST_KEY):
            if mode == FIRST_KEY and b == ord("}"):
                return self._close(b)
            if b != ord('"'):
                return False
            self.mode, self.in_key, self.aux = STRING, True, 0
            return True
        if mode == COLON:
            if b != ord(":"):
                return False
            self.mode = VALUE
            return True
        # AFTER a value inside a container
        if b == ord(","):
            self.mode = KEY if self.stack[-1] == ord("{") else VALUE
            return True
        return self._close(b)

    def _value(self, b: int) -> bool:
        if not self.stack and b != ord("{"):
            return False  # json_object: the top level is an object
        if b in (ord("{"), ord("[")):
            self.stack += (b,)
            self.mode = FIRST_KEY if b == ord("{") else FIRST_VALUE
        elif b == ord('"'):
            self.mode, self.in_key, self.aux = STRING, False, 0
        elif b == ord("-"):
            self.mode, self.aux = NUMBER, N_MINUS
        elif b in DIGITS:
            self.mode, self.aux = NUMBER, N_ZERO if b == ord("0") else N_INT
        elif b in LITERALS:
            self.mode, self.literal = LITERAL, LITERALS[b]
        else:
            return False
        return True

    def _close(self, b: int) -> bool:
        want = {ord("{"): ord("}"), ord("["): ord("]")}
        if not self.stack or want[self.stack[-1]] != b:
            return False
        self.stack = self.stack[:-1]
        self._value_done()
        return True

    def _value_done(self) -> None:
        self.mode = AFTER if self.stack else DONE

    def _string(self, b: int) -> bool:
        if self.aux == 1:
            if b not in ESCAPES:
                return False
            self.aux = 5 if b == ord("u") else 0
            return True
        if self.aux >= 2:
            if b not in HEX:
                return False
            self.aux = 0 if self.aux == 2 else self.aux - 1
            return True
        if b < 0x20:
            return False  # control characters must be escaped
        if b == ord("\\"):
            self.aux = 1
        elif b == ord('"'):
            if self.in_key:
                self.mode = COLON
            else:
                self._value_done()
        return True  # any other byte, UTF-8 continuation bytes included

    def _number(self, b: int) -> tuple[bool, bool]:
        """(still valid, b consumed by the number)."""
        part = self.aux
        nxt = None
        if b in DIGITS:
            nxt = {
                N_MINUS: N_ZERO if b == ord("0") else N_INT,
                N_INT: N_INT,
                N_DOT: N_FRAC,
                N_FRAC: N_FRAC,
                N_E: N_EXP,
                N_ESIGN: N_EXP,
                N_EXP: N_EXP,
            }.get(part)
        elif b == ord(".") and part in (N_ZERO, N_INT):
            nxt = N_DOT
        elif b in (ord("e"), ord("E")) and part in (N_ZERO, N_INT, N_FRAC):
            nxt = N_E
        elif b in (ord("+"), ord("-")) and part == N_E:
            nxt = N_ESIGN
        if nxt is not None:
            self.aux = nxt
            return True, True
        if part not in N_COMPLETE:
            return False, False
        self._value_done()
        return True, False


class JsonObjectConstraint:
    """The engine's token constraint for one row in JSON mode (see the module docstring).

    ``token_bytes[i]`` is token i's bytes; ``end_ids`` (the end-of-text token) are allowed only
    once the object is complete.
    """

    CHECK = 256  # candidates checked per step at most, once one fits
    WHOLE = 4096  # a vocabulary up to this size is checked whole

    def __init__(
        self, token_bytes: Sequence[bytes], end_ids: Collection[int] = (), raised: Collection[int] = ()
    ) -> None:
        self.token_bytes = token_bytes
        self.end_ids = frozenset(end_ids)
        self.raised = sorted(raised)  # token ids a logit bias pushes up: always checked
        self.json = JsonPrefix()

    @property
    def done(self) -> bool:
        return self.json.done

    def fits(self, token: int) -> bool:
        if token in self.end_ids or not 0 <= token < len(self.token_bytes):
            return False
        data = self.token_bytes[token]
        return bool(data) and self.json.copy().feed(data)

    def mask(self, logits: Tensor) -> Tensor:
        """logits (V,) -> (V,) with every token that cannot come next at -inf."""
        allowed = sorted(self.end_ids) if self.done else self._candidates(logits)
        if not allowed:
            allowed = list(range(logits.shape[0]))  # nothing fits: leave it to the stop rules
        out = torch.full_like(logits, float("-inf"))
        idx = torch.tensor(allowed, dtype=torch.long, device=logits.device)
        out[idx] = logits[idx]
        return out

    def _candidates(self, logits: Tensor) -> list[int]:
        if logits.shape[0] <= self.WHOLE:
            return [t for t in range(logits.shape[0]) if self.fits(t)]
        probs, order = torch.sort(torch.softmax(logits.float(), -1), descending=True)
        allowed, mass = [t for t in self.raised if self.fits(t)], 0.0
        for n, (tok, p) in enumerate(zip(order.tolist(), probs.tolist(), strict=True)):
            if self.fits(tok):
                allowed.append(tok)
            mass += p
            if allowed and (mass >= 0.999 or n + 1 >= self.CHECK):
                break
        return allowed

    def advance(self, token: int) -> None:
        if self.done or token in self.end_ids:
            return
        ok = self.json.feed(self.token_bytes[token])
        assert ok, f"token {token} was sampled though it does not fit the JSON read so far"
