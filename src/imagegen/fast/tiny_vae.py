"""Decode with a tiny VAE: TAESD / TAESDXL (diffusers' AutoencoderTiny, 2.4 M parameters against the full VAE's 84 M).

On a CPU the full VAE's decode costs more than a whole step of the few-step recipes, so it dominates them; the tiny
one decodes about 10x faster, with slightly softer detail. Its latents are the UNet's own (scaling factor 1), so the
pipeline decodes them unchanged, as diffusers documents for `pipe.vae = AutoencoderTiny...`.
"""

from __future__ import annotations

from typing import Any

from imagegen.errors import ModelNotFound
from imagegen.models.components import ComponentStore, Precision
from imagegen.recipes.base import Recipe


def use_tiny_vae(pipe: Any, recipe: Recipe, store: ComponentStore, precision: Precision) -> None:
    """Replace the pipeline's VAE by the recipe's tiny one; refuse one whose latents are not the pipeline's."""
    model = recipe.tiny_vae
    tiny = store.component(store.folder(model, precision), None, "diffusers", "AutoencoderTiny", precision)
    scale = 2 ** (len(tiny.config.block_out_channels) - 1)
    channels = pipe.vae.config.latent_channels
    if scale != pipe.vae_scale_factor or tiny.config.latent_channels != channels:
        raise ModelNotFound(f"tiny VAE {model.name} does not fit recipe {recipe.name}: it decodes {scale}x from "
                            f"{tiny.config.latent_channels} channels, the pipeline's latents are "
                            f"{pipe.vae_scale_factor}x with {channels}")
    pipe.vae = tiny
