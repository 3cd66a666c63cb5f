"""`--fast int8` / `--fast fp8`: weight-only quantisation of the denoiser's linear layers through torchao.

Weights are stored in 8 bits and widened per matrix multiplication: half the denoiser's memory in half precision
(a quarter in float32), and on a GPU faster steps where reading weights bounds the speed (small batches). The
activations stay in the pipeline's dtype. fp8 needs a GPU with fp8 support (compute capability 8.9+: Ada, Hopper);
Engine.usable_fast leaves it out elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imagegen.models.components import ComponentStore, Precision
from imagegen.recipes.base import Recipe


def quantized_weights(config: str) -> Callable[[Any, Recipe, ComponentStore, Precision], None]:
    """The speed-up that quantises the denoiser with torchao's `config` (the name of a torchao.quantization
    config class)."""

    def quantize(pipe: Any, recipe: Recipe, store: ComponentStore, precision: Precision) -> None:
        import torchao.quantization

        torchao.quantization.quantize_(getattr(pipe, recipe.denoiser), getattr(torchao.quantization, config)())

    return quantize
