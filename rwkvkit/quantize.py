"""Swapping a model's linear layers for other implementations (fast layouts, weight-only int8).

Kept apart from the model files: a model is written with plain ``nn.Linear`` layers, and what
runs them is decided here, after loading.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def swap_linear_layers(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> int:
    """Replace every ``nn.Linear`` in ``model`` (in place) by ``make(linear)``; returns how many.

    Subclasses count too, so a model whose layers are already ``FastLinear`` can still be
    quantized.
    """
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for parent, name, child in targets:
        setattr(parent, name, make(child))
    return len(targets)
