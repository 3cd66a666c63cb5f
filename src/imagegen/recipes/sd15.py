"""Stable Diffusion 1.5 and every model fine-tuned from it (the reference tutorial's majicmixRealistic with a
style LoRA).

The safety checker is left out, as in AUTOMATIC1111 and ComfyUI: it is a 1.2 GB CLIP model whose false
positives turn images black, and what a user may generate is the user's responsibility, not the sampler's.
"""

from __future__ import annotations

from typing import Any

from imagegen.models.sources import ModelRef, RepoKind
from imagegen.recipes.base import BuildContext, Defaults, Recipe, prompt_list

SD15 = ModelRef("stable-diffusion-v1-5/stable-diffusion-v1-5", "AI-ModelScope/stable-diffusion-v1-5")
TAESD = ModelRef("madebyollin/taesd", kind=RepoKind.MODEL)  # SD 1.5's latent space, for --fast tiny-vae


def _without_safety_checker(ctx: BuildContext) -> Any:
    return ctx.pipeline(safety_checker=None, feature_extractor=None, requires_safety_checker=False)


SD15_RECIPE = Recipe(
    tiny_vae=TAESD,
    step_cache="deepcache",
    name="sd15",
    summary="Stable Diffusion 1.5 or a fine-tune of it (folder, hub id[/subfolder] or civitai .safetensors), LoRAs",
    models={"base": SD15},
    # The reference tutorial calls the pipeline with diffusers' defaults: 50 steps, guidance 7.5, the UNet's 512x512.
    defaults=Defaults(num_inference_steps=50, guidance_scale=7.5, width=512, height=512),
    build=_without_safety_checker,
    image_inputs=True,
    takes_loras=True,
    batch_prompts=prompt_list,
)

RECIPES = (SD15_RECIPE,)
