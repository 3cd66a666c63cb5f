"""Opt-in speed-ups (`--fast`, the `fast` request option): each trades a little fidelity for speed, so each is named
in the infotext and replayed by `--from`. The default path never imports this package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imagegen.fast.tiny_vae import use_tiny_vae
from imagegen.models.components import ComponentStore, Precision
from imagegen.recipes.base import Recipe

# name (a key of options.FAST_METHODS) -> what it does to an assembled text-to-image pipeline, before placement.
# bf16 has no entry: it is a precision, which Engine.precision gives every component as it loads.
SpeedUp = Callable[[Any, Recipe, ComponentStore, Precision], None]
PIPELINE_METHODS: dict[str, SpeedUp] = {"tiny-vae": use_tiny_vae}


def speed_up(pipe: Any, recipe: Recipe, methods: tuple[str, ...], store: ComponentStore,
             precision: Precision) -> None:
    """Apply `methods` (resolved: each applies to the recipe and device) to a freshly assembled pipeline."""
    for name in methods:
        if name in PIPELINE_METHODS:
            PIPELINE_METHODS[name](pipe, recipe, store, precision)
