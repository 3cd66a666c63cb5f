"""Opt-in speed-ups (`--fast`, the `fast` request option): each trades a little fidelity for speed, so each is named
in the infotext and replayed by `--from`. The default path never imports this package.

A method acts at one of three moments: on the assembled pipeline before it is placed on its device (the tiny VAE
is placed with the rest), on the placed pipeline (quantisation, then compilation of the quantised weights), or
around each pipeline call (step caching, whose state belongs to one call). bf16 has no entry: it is a precision,
which Engine.precision gives every component as it loads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from imagegen.fast.compile import compile_denoiser
from imagegen.fast.quantize import quantized_weights
from imagegen.fast.step_cache import STEP_CACHES
from imagegen.fast.tiny_vae import use_tiny_vae
from imagegen.models.components import ComponentStore, Precision
from imagegen.recipes.base import Recipe

SpeedUp = Callable[[Any, Recipe, ComponentStore, Precision], None]
BEFORE_PLACEMENT: dict[str, SpeedUp] = {"tiny-vae": use_tiny_vae}
AFTER_PLACEMENT: dict[str, SpeedUp] = {"int8": quantized_weights("Int8WeightOnlyConfig"),
                                       "fp8": quantized_weights("Float8WeightOnlyConfig"),
                                       "compile": compile_denoiser}


def prepare(pipe: Any, recipe: Recipe, methods: tuple[str, ...], store: ComponentStore,
            precision: Precision) -> None:
    """Apply `methods` (resolved: each applies to the recipe and device) to a freshly assembled pipeline."""
    _apply(BEFORE_PLACEMENT, pipe, recipe, methods, store, precision)


def optimize(pipe: Any, recipe: Recipe, methods: tuple[str, ...], store: ComponentStore,
             precision: Precision) -> None:
    """Apply `methods` to the pipeline once it is on its device, in the table's order (quantise, then compile)."""
    _apply(AFTER_PLACEMENT, pipe, recipe, methods, store, precision)


@contextmanager
def during_call(pipe: Any, recipe: Recipe, methods: tuple[str, ...]) -> Iterator[None]:
    """The per-call methods for one pipeline call."""
    with ExitStack() as stack:
        if "step-cache" in methods:
            stack.enter_context(STEP_CACHES[recipe.step_cache](pipe))
        yield


def _apply(table: dict[str, SpeedUp], pipe: Any, recipe: Recipe, methods: tuple[str, ...], store: ComponentStore,
           precision: Precision) -> None:
    for name, speed_up in table.items():
        if name in methods:
            speed_up(pipe, recipe, store, precision)
