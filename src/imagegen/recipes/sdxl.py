"""The SDXL family of the reference tutorial: plain SDXL, SDXL-Turbo, LCM-SDXL and SDXL-Lightning.

All but Turbo share the SDXL base's text encoders and VAE; only the UNet and scheduler change.
"""

from __future__ import annotations

from typing import Any

from imagegen.models.sources import ModelRef, RepoKind
from imagegen.recipes.base import BuildContext, Defaults, Recipe, prompt_list

SDXL_BASE = ModelRef("stabilityai/stable-diffusion-xl-base-1.0", "AI-ModelScope/stable-diffusion-xl-base-1.0")
SDXL_TURBO = ModelRef("stabilityai/sdxl-turbo", "AI-ModelScope/sdxl-turbo")
LCM_SDXL_UNET = ModelRef("latent-consistency/lcm-sdxl", "AI-ModelScope/lcm-sdxl", RepoKind.MODEL)
SDXL_LIGHTNING = ModelRef("ByteDance/SDXL-Lightning", "AI-ModelScope/SDXL-Lightning", RepoKind.FILES,
                          file_pattern="sdxl_lightning_{steps}step_unet.safetensors")
LIGHTNING_STEPS = (1, 2, 4, 8)
# Ollin Boer Bohan's TAESDXL (MIT): SDXL's latent space, decoded by a 2.4 M-parameter AutoencoderTiny (--fast tiny-vae).
TAESDXL = ModelRef("madebyollin/taesdxl", kind=RepoKind.MODEL)


def _whole_pipeline(ctx: BuildContext) -> Any:
    return ctx.pipeline()


def _lcm(ctx: BuildContext) -> Any:
    from diffusers import LCMScheduler

    pipe = ctx.pipeline(unet=ctx.component("unet", "UNet2DConditionModel"))
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return pipe


def _lightning(ctx: BuildContext) -> Any:
    from diffusers import EulerDiscreteScheduler

    steps = ctx.request.num_inference_steps
    unet = ctx.model_from_file("unet")
    pipe = ctx.pipeline(unet=unet)
    # The model card: "trailing" timesteps always; the 1-step UNet is trained to predict x0 ("sample").
    extra = {"prediction_type": "sample"} if steps == 1 else {}
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing", **extra)
    return pipe


SDXL = Recipe(
    tiny_vae=TAESDXL,
    step_cache="deepcache",
    name="sdxl",
    summary="SDXL base 1.0, plain text-to-image",
    models={"base": SDXL_BASE},
    # 30 steps and guidance 5.0 are diffusers' SDXL defaults, which the reference tutorial's ModelScope pipeline uses.
    defaults=Defaults(num_inference_steps=30, guidance_scale=5.0, width=1024, height=1024),
    build=_whole_pipeline,
    image_inputs=True,
    takes_loras=True,
    batch_prompts=prompt_list,
)

SDXL_TURBO_RECIPE = Recipe(
    tiny_vae=TAESDXL,
    step_cache="deepcache",
    name="sdxl-turbo",
    summary="SDXL-Turbo: adversarial diffusion distillation, 1 step",
    models={"base": SDXL_TURBO},
    # ADD trains the student to match the teacher in one step without classifier-free guidance (guidance 0).
    defaults=Defaults(num_inference_steps=1, guidance_scale=0.0, width=512, height=512, img2img_steps=2,
                      strength=0.5),
    build=_whole_pipeline,
    image_inputs=True,
    takes_loras=True,
    batch_prompts=prompt_list,
)

LCM_SDXL = Recipe(
    tiny_vae=TAESDXL,
    step_cache="deepcache",
    name="lcm-sdxl",
    summary="Latent Consistency Model UNet on SDXL base, LCMScheduler, 4 steps",
    models={"base": SDXL_BASE, "unet": LCM_SDXL_UNET},
    defaults=Defaults(num_inference_steps=4, guidance_scale=8.0, width=1024, height=1024),
    build=_lcm,
    image_inputs=True,
    takes_loras=True,
    batch_prompts=prompt_list,
)

SDXL_LIGHTNING_RECIPE = Recipe(
    tiny_vae=TAESDXL,
    step_cache="deepcache",
    name="sdxl-lightning",
    summary="SDXL-Lightning N-step UNet on SDXL base, Euler with trailing timesteps",
    models={"base": SDXL_BASE, "unet": SDXL_LIGHTNING},
    # Lightning is distilled without CFG: guidance must stay 0 (model card).
    defaults=Defaults(num_inference_steps=4, guidance_scale=0.0, width=1024, height=1024),
    build=_lightning,
    image_inputs=True,
    takes_loras=True,
    batch_prompts=prompt_list,
    allowed_steps=LIGHTNING_STEPS,
    cache_key=lambda request: request.num_inference_steps,
)

RECIPES = (SDXL, SDXL_TURBO_RECIPE, LCM_SDXL, SDXL_LIGHTNING_RECIPE)
