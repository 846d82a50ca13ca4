"""The OpenAI request bodies, checked field by field at the edge, and OpenAI's error shape.

Every field is read with its type and range before anything is queued; a bad one raises
:class:`ApiError` (``{"error": {"message", "type", "param", "code"}}`` with its HTTP status),
naming the field and what it must be. Unknown fields are ignored, as OpenAI's API does; known
fields this server cannot honour (``suffix``, ``tools``, a JSON schema) are refused, never
silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from ..chat import ChatTemplate
from ..errors import RwkvkitError
from ..fileio import read_json
from ..sampling import SamplingParams

MAX_N = 16  # choices per request
MAX_STOP = 16  # stop strings per request
MAX_STOP_CHARS = 512
MAX_LOGPROBS = 20
MAX_PROMPTS = 64  # prompts in one completions request
MAX_MESSAGES = 10_000
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


class ApiError(Exception):
    """A request the server refuses: its HTTP status and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; NaN and Infinity are not JSON."""

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(raw, parse_constant=no_constant)
    except (ValueError, RecursionError) as e:
        raise bad(f"the request body is not valid JSON ({str(e)[:200]}); send a JSON object") from None
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


# --------------------------------------------------------------------------------------------
# Reading one field


def _kind(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


class Fields:
    """Typed, range-checked reads of one body's fields; a missing or null field is its default."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def has(self, name: str) -> bool:
        return self.body.get(name) is not None

    def raw(self, name: str, default: Any = None) -> Any:
        value = self.body.get(name)
        return default if value is None else value

    def integer(
        self, name: str, default: int | None, lo: int | None = None, hi: int | None = None
    ) -> int | None:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad(f"{name} must be an integer, got {_kind(value)} {value!r:.50}", name)
        self._range(name, value, lo, hi)
        return value

    def number(self, name: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise bad(f"{name} must be a number, got {_kind(value)} {value!r:.50}", name)
        if (value <= lo if lo_open else value < lo) or value > hi:
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
            raise bad(f"{name}={value!r} is out of range; it must be in {interval}", name)
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        return self._typed(name, default, bool, "true or false")

    def string(self, name: str, default: str | None = None) -> str | None:
        return self._typed(name, default, str, "a string")

    def object(self, name: str) -> dict[str, Any]:
        return self._typed(name, {}, dict, "an object")

    def _typed(self, name: str, default: Any, kind: type, words: str) -> Any:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, kind):
            raise bad(f"{name} must be {words}, got {_kind(value)} {value!r:.50}", name)
        return value

    @staticmethod
    def _range(name: str, value: int, lo: int | None, hi: int | None) -> None:
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            rule = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
            raise bad(f"{name}={value} is out of range; it must be {rule}", name)


# --------------------------------------------------------------------------------------------
# What both routes share


@dataclasses.dataclass
class Generation:
    """How to generate, whichever route asked: the sampling fields of OpenAI's API (and min_p,
    top_k and penalty_decay, which vLLM and llama.cpp's servers also take)."""

    model: str | None
    max_tokens: int
    params: SamplingParams
    stop: list[str]
    seed: int | None
    n: int
    stream: bool
    include_usage: bool
    logprobs: int | None  # None: none; k: each token's logprob and the k most likely


def read_generation(
    f: Fields, *, max_tokens_default: int, max_tokens_min: int, max_tokens_limit: int, vocab_size: int
) -> Generation:
    max_tokens = f.integer("max_tokens", None, max_tokens_min, max_tokens_limit)
    if max_tokens is None:
        max_tokens = f.integer("max_completion_tokens", max_tokens_default, max_tokens_min, max_tokens_limit)
    assert max_tokens is not None
    top_k = f.integer("top_k", 0, -1, None)
    logit_bias = _logit_bias(f.object("logit_bias"), vocab_size)
    try:
        params = SamplingParams(
            temperature=f.number("temperature", 1.0, 0.0, 2.0),
            top_p=f.number("top_p", 1.0, 0.0, 1.0, lo_open=True),
            top_k=max(0, top_k or 0),
            min_p=f.number("min_p", 0.0, 0.0, 1.0),
            presence_penalty=f.number("presence_penalty", 0.0, -2.0, 2.0),
            frequency_penalty=f.number("frequency_penalty", 0.0, -2.0, 2.0),
            penalty_decay=f.number("penalty_decay", 0.996, 0.0, 1.0),
            logit_bias=logit_bias,
        )
    except RwkvkitError as e:
        raise bad(str(e)) from None
    n = f.integer("n", 1, 1, MAX_N)
    best_of = f.integer("best_of", None, 1, MAX_N)
    if best_of is not None and best_of != n:
        raise bad("best_of is not supported (only best_of = n); drop it, or ask for n choices", "best_of")
    stream = f.boolean("stream", False)
    options = Fields(f.object("stream_options"))
    return Generation(
        model=f.string("model"),
        max_tokens=max_tokens,
        params=params,
        stop=_stop(f.raw("stop")),
        seed=f.integer("seed", None, *SEED_RANGE),
        n=n or 1,
        stream=stream,
        include_usage=stream and options.boolean("include_usage", False),
        logprobs=None,
    )


def _stop(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop must be a string or an array of strings", "stop")
    if len(stops) > MAX_STOP:
        raise bad(f"stop has {len(stops)} strings; at most {MAX_STOP} are allowed", "stop")
    for s in stops:
        if not s or len(s) > MAX_STOP_CHARS:
            raise bad(f"each stop string must have 1 to {MAX_STOP_CHARS} characters", "stop")
    return stops


def _logit_bias(value: dict[str, Any], vocab_size: int) -> dict[int, float]:
    out = {}
    for key, bias in value.items():
        try:
            tok = int(key)
        except ValueError:
            raise bad(f"logit_bias keys must be token ids, got {key!r:.30}", "logit_bias") from None
        if not 0 <= tok < vocab_size:
            raise bad(
                f"logit_bias names token {tok}, outside the vocabulary (0..{vocab_size - 1})", "logit_bias"
            )
        if not isinstance(bias, int | float) or isinstance(bias, bool) or not -100 <= bias <= 100:
            raise bad("logit_bias values must be numbers in [-100, 100]", "logit_bias")
        out[tok] = float(bias)
    return out


def refuse_unsupported(f: Fields, names: tuple[str, ...]) -> None:
    for name in names:
        value = f.body.get(name)
        if value not in (None, [], ""):
            raise bad(f"{name} is not supported by this server; leave it out", name)


# --------------------------------------------------------------------------------------------
# The two routes


@dataclasses.dataclass
class CompletionBody:
    gen: Generation
    prompts: list[str | list[int]]
    echo: bool


def read_completion(f: Fields, **limits: Any) -> CompletionBody:
    refuse_unsupported(f, ("suffix",))
    gen = read_generation(f, max_tokens_default=16, max_tokens_min=0, **limits)
    gen.logprobs = f.integer("logprobs", None, 0, MAX_LOGPROBS)
    prompt = f.body.get("prompt")
    if prompt is None:
        raise bad("prompt is required: a string, an array of strings, or token ids", "prompt")
    if isinstance(prompt, str):
        prompts: list[str | list[int]] = [prompt]
    elif isinstance(prompt, list) and prompt and all(_is_id(t) for t in prompt):
        prompts = [list(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, list) and all(map(_is_id, p)) for p in prompt)
    ):
        prompts = [list(p) for p in prompt]
    else:
        raise bad(
            "prompt must be a string, a non-empty array of strings, an array of token ids or an array "
            "of such arrays",
            "prompt",
        )
    if len(prompts) * gen.n > MAX_PROMPTS:
        raise bad(f"{len(prompts)} prompts x n={gen.n} is over {MAX_PROMPTS} choices per request", "prompt")
    return CompletionBody(gen, prompts, f.boolean("echo", False))


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass
class ChatBody:
    gen: Generation
    messages: list[dict[str, str]]  # {"role": "system" | "user" | "assistant", "content": str}
    json_mode: bool


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def read_chat(f: Fields, **limits: Any) -> ChatBody:
    refuse_unsupported(f, ("tools", "functions"))
    gen = read_generation(f, max_tokens_default=limits["max_tokens_limit"], max_tokens_min=1, **limits)
    if f.boolean("logprobs", False):
        gen.logprobs = f.integer("top_logprobs", 0, 0, MAX_LOGPROBS)
    elif f.has("top_logprobs"):
        raise bad("top_logprobs needs logprobs: true", "top_logprobs")
    messages = f.body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty array of {role, content} objects", "messages")
    if len(messages) > MAX_MESSAGES:
        raise bad(f"messages has {len(messages)} entries; at most {MAX_MESSAGES} are allowed", "messages")
    return ChatBody(gen, [_message(m, i) for i, m in enumerate(messages)], _json_mode(f))


def _message(m: Any, i: int) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise bad(f"{where} must be an object with role and content", where)
    role = m.get("role")
    if role not in ROLES:
        raise bad(f"{where}.role must be one of system, developer, user, assistant; got {role!r:.30}", where)
    content = m.get("content")
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise bad(f"{where}.content: only text parts ({{type: text, text}}) are supported", where)
            texts.append(part["text"])
        content = "".join(texts)
    if content is None and role == "assistant":
        content = ""
    if not isinstance(content, str):
        raise bad(f"{where}.content must be a string or an array of text parts", where)
    return {"role": ROLES[role], "content": content}


def _json_mode(f: Fields) -> bool:
    fmt = f.object("response_format")
    kind = fmt.get("type", "text") if fmt else "text"
    if kind not in ("text", "json_object"):
        raise bad(
            f"response_format type {kind!r:.30} is not supported; use text or json_object", "response_format"
        )
    return kind == "json_object"


def read_template(path: str) -> ChatTemplate:
    """A chat template from a JSON file of ChatTemplate's fields (user, assistant, system, turn_end)."""
    names = {field.name for field in dataclasses.fields(ChatTemplate)}
    try:  # bounded in size and nesting, a FIFO refused rather than waited on
        data = read_json(path, kind=object)
    except RwkvkitError as e:
        raise RwkvkitError(f"--chat-template {e}") from None
    if (
        not isinstance(data, dict)
        or set(data) - names
        or not all(isinstance(v, str) and v for v in data.values())
    ):
        raise RwkvkitError(
            f"--chat-template {path}: must be a JSON object with non-empty string fields among {sorted(names)}"
        )
    return ChatTemplate(**data)
