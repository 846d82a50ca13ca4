"""JSON mode: the byte-level recognizer against Python's json module, and the token constraint
on a real engine (every output a JSON prefix, a closed object parses) and on a large vocabulary."""

from __future__ import annotations

import itertools
import json
import random

import torch

from rwkvkit.engine import Engine, Request
from rwkvkit.models.rwkv4 import RWKV4Config
from rwkvkit.sampling import SamplingParams
from rwkvkit.serve.jsonmode import JsonObjectConstraint, JsonPrefix
from rwkvkit.testing import random_rwkv4

OBJECTS = [
    {},
    {"a": 1},
    {"k": [1, -2.5, 3e10, -0.0, 1.5e-3, True, False, None, "x"]},
    {"nested": {"deep": [[], {}, [{"z": "é 世界 😀"}]]}, "esc": 'quote " slash \\ \n tab \t \u0001'},
    {"": "", "n": 0, "e": 12e-5, "big": 123456789012345678901234567890},
]


def accepts(text: str) -> tuple[bool, bool]:
    """(every byte fitted, the object is complete)."""
    p = JsonPrefix()
    return p.feed(text.encode()), p.done


def test_every_prefix_of_a_json_object_is_accepted() -> None:
    for obj in OBJECTS:
        for text in (
            json.dumps(obj),
            json.dumps(obj, ensure_ascii=False),
            json.dumps(obj, separators=(",", ":")),
        ):
            data = text.encode()
            for n in range(len(data) + 1):
                p = JsonPrefix()
                assert p.feed(data[:n]), (text, n)
                assert p.done == (n == len(data))


def test_the_recognizer_agrees_with_json_loads_on_mutations() -> None:
    """A text it takes whole and complete parses as an object; an object text json takes (with
    single blanks) it takes."""
    rng = random.Random(1)
    alphabet = '{}[]":,.-+eE0123456789 \n\\tu"afnlrsx'
    seen = {True: 0, False: 0}
    for _ in range(4000):
        text = json.dumps(rng.choice(OBJECTS), separators=rng.choice([(",", ":"), (", ", ": ")]))
        chars = list(text)
        for _ in range(rng.randrange(1, 3)):
            i = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.4:
                chars[i] = rng.choice(alphabet)
            elif op < 0.7:
                del chars[i]
            else:
                chars.insert(i, rng.choice(alphabet))
        text = "".join(chars)
        if text != text.strip() or any(
            a in " \n\t\r" and b in " \n\t\r" for a, b in itertools.pairwise(text)
        ):
            continue  # the recognizer allows one blank at a time, by design
        try:
            valid = isinstance(json.loads(text), dict)
        except ValueError:
            valid = False
        fitted, done = accepts(text)
        assert (fitted and done) == valid, text
        seen[valid] += 1
    assert seen[True] > 100 and seen[False] > 1000


def test_refusals() -> None:
    for text in (
        "[1, 2]",
        '"x"',
        "1",
        " {}",
        "{}  ",
        '{"a" 1}',
        "{'a': 1}",
        '{"a": 01}',
        '{"a": tru',
        '{"a":\n\n1}',
    ):
        fitted, done = accepts(text)
        if text == " {}":
            assert fitted and done  # one leading blank is fine
        elif text == '{"a": tru':
            assert fitted and not done
        else:
            assert not (fitted and done), text


def test_the_constraint_keeps_a_random_model_to_json() -> None:
    """A random-weight byte model writes noise; constrained, every output is a JSON prefix and
    every row that closes its object parses."""
    model = random_rwkv4(RWKV4Config(vocab_size=256, n_layer=2, n_embd=32, ffn_dim=64), 5)
    table = [bytes([i]) for i in range(256)]
    engine = Engine(model)
    rules = {}
    for seed in range(8):
        rule = JsonObjectConstraint(table, [0])
        bias = {ord('"'): 3.0, ord("}"): 3.0, ord("]"): 3.0}
        rid = engine.add(
            Request(
                prompt=[1, 2, 3],
                params=SamplingParams(logit_bias=bias),
                max_tokens=200,
                seed=seed,
                constraint=rule,
            )
        )
        rules[rid] = (rule, [])
    while engine.has_work:
        for e in engine.step():
            rule, out = rules[e.row]
            if e.token is not None:
                out.append(e.token)
            if e.result is None and rule.done:
                engine.stop(e.row)
    closed = 0
    for rule, out in rules.values():
        text = bytes(out)
        assert JsonPrefix().feed(text)
        if rule.done:
            # stray bytes in strings reach the client as U+FFFD, as the server's decoder sends them
            assert isinstance(json.loads(text.decode(errors="replace")), dict)
            closed += 1
    assert closed >= 3


def test_a_large_vocabulary_is_checked_from_the_most_likely_down() -> None:
    rng = random.Random(2)
    pieces = [
        "{",
        "}",
        '"',
        ":",
        ",",
        " ",
        "1",
        "a",
        "true",
        '"a":',
        '{"',
        '"}',
        "[",
        "]",
        "x y",
        "\\n",
        "\n\n",
    ]
    table = [b""] + [rng.choice(pieces).encode() for _ in range(5999)]
    rule = JsonObjectConstraint(table, [0], raised=[5])
    for step in range(40):
        logits = torch.randn(6000, generator=torch.Generator().manual_seed(step)) * 3
        masked = rule.mask(logits)
        allowed = torch.isfinite(masked).nonzero()[:, 0].tolist()
        assert allowed and all(rule.fits(t) for t in allowed)
        best = int(masked.argmax())
        assert best == max((t for t in range(6000) if rule.fits(t)), key=lambda t: float(logits[t]))
        if rule.fits(5):
            assert 5 in allowed  # a token a logit bias raises is never masked for being unlikely
        rule.advance(best)
        if rule.done:
            break
