"""The models a server answers for: one base model and named variants of it (``/v1/models``).

A :class:`Variant` is what a request's ``model`` field picks. The base is one; a state-tuned
variant is the same weights starting from its own initial state (``start``); an adapter variant
is other weights (``model``: e.g. the base with a LoRA merged in), stepped by its own engine in
the same scheduler thread. Adding one is one :meth:`Registry.add` call before the server starts;
its prefix-cache entries live under its own name, as the same tokens from another start or other
weights give another state.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from torch import nn

from ..chat import ChatTemplate
from ..engine import Prefix
from ..errors import RwkvkitError
from .schemas import ApiError


@dataclasses.dataclass(frozen=True, eq=False)
class Variant:
    """One name in ``/v1/models``: the base model, or the base with a state or weights of its own."""

    name: str
    model: nn.Module
    kind: str = "base"  # "base", "state" (a tuned initial state) or "adapter" (other weights)
    start: Prefix | None = None  # every request starts from this state (batch 1), not a fresh one
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    @property
    def start_tokens(self) -> int:
        return 0 if self.start is None else self.start.tokens

    def card(self) -> dict[str, Any]:
        """The model object of OpenAI's API, with what kind of variant it is."""
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "rwkvkit",
            "kind": self.kind,
        }


class Registry:
    """The base model, its tokenizer and chat template, and the variants by name."""

    def __init__(
        self, model: nn.Module, tokenizer: Any, name: str, template: ChatTemplate | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template or ChatTemplate()
        self.base = Variant(name, model)
        self.variants: dict[str, Variant] = {name: self.base}

    def add(self, variant: Variant) -> Variant:
        if variant.name in self.variants:
            raise RwkvkitError(
                f"a model named {variant.name!r} is already served; give each variant its own name"
            )
        if variant.start is not None and variant.start.state.batch_size != 1:
            raise RwkvkitError(f"{variant.name}: a start state must have batch size 1")
        self.variants[variant.name] = variant
        return variant

    def get(self, name: str | None) -> Variant:
        """The variant a request names (the base when it names none)."""
        if name is None:
            return self.base
        variant = self.variants.get(name)
        if variant is None:
            raise ApiError(
                404,
                f"the model {name!r:.100} does not exist; GET /v1/models lists the models served: "
                f"{', '.join(sorted(self.variants))}",
                param="model",
                code="model_not_found",
            )
        return variant

    def listing(self) -> dict[str, Any]:
        return {"object": "list", "data": [v.card() for v in self.variants.values()]}
