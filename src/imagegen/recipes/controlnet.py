"""SDXL with a ControlNet: the reference tutorial's Canny ControlNet, or any SDXL ControlNet given with --controlnet.

The stock SDXL VAE overflows in float16 (black or NaN images); madebyollin's fp16-fix VAE is the same
decoder rescaled to stay in range, so the reference tutorial swaps it in.
"""

from __future__ import annotations

from typing import Any

from imagegen.errors import InvalidRequest
from imagegen.models.sources import ModelRef, RepoKind
from imagegen.recipes.base import (
    BuildContext,
    Defaults,
    Recipe,
    prompt_list,
    text_to_image_arguments,
)
from imagegen.recipes.sdxl import SDXL_BASE, TAESDXL
from imagegen.request import GenerationRequest

CONTROLNET_CANNY_SDXL = ModelRef("diffusers/controlnet-canny-sdxl-1.0", "AI-ModelScope/controlnet-canny-sdxl-1.0",
                                 RepoKind.MODEL)
SDXL_VAE_FP16_FIX = ModelRef("madebyollin/sdxl-vae-fp16-fix", "AI-ModelScope/sdxl-vae-fp16-fix", RepoKind.MODEL)


def _with_controlnet(ctx: BuildContext) -> Any:
    from diffusers import StableDiffusionXLControlNetPipeline

    controlnet = ctx.component("controlnet", "ControlNetModel")
    pipe = ctx.pipeline(pipeline_class=StableDiffusionXLControlNetPipeline, controlnet=controlnet,
                        vae=ctx.component("vae", "AutoencoderKL"))
    fits = {name: getattr(pipe.unet.config, name) for name in ("cross_attention_dim", "addition_embed_type")}
    if {name: getattr(controlnet.config, name) for name in fits} != fits:
        raise InvalidRequest(f"ControlNet {ctx.model('controlnet').name} is not made for SDXL (an SD 1.5 ControlNet?): "
                             "choose an SDXL ControlNet")
    return pipe


def _arguments(pipe: Any, request: GenerationRequest) -> dict[str, Any]:
    from imagegen.pipelines.control import control_image

    return {**text_to_image_arguments(pipe, request), "image": control_image(request),
            "controlnet_conditioning_scale": request.controlnet_conditioning_scale}


SDXL_CONTROLNET_CANNY = Recipe(
    tiny_vae=TAESDXL,
    step_cache="deepcache",
    name="sdxl-controlnet-canny",
    summary="SDXL base + Canny ControlNet (OpenCV edges 100/200), fp16-fix VAE, CPU offload on GPU",
    models={"base": SDXL_BASE, "controlnet": CONTROLNET_CANNY_SDXL, "vae": SDXL_VAE_FP16_FIX},
    # The reference tutorial leaves steps, guidance and size to the pipeline: 50 steps, guidance 5.0, the control
    # image's size (resolve takes it from the image when --width/--height are not given).
    defaults=Defaults(num_inference_steps=50, guidance_scale=5.0, width=1024, height=1024,
                      negative_prompt="low quality, bad quality, sketches", controlnet_conditioning_scale=0.5,
                      canny_low=100, canny_high=200),
    build=_with_controlnet,
    arguments=_arguments,
    takes_loras=True,
    batch_prompts=prompt_list,
    gpu_offload="model",
    cache_key=lambda request: request.controlnet,
)

RECIPES = (SDXL_CONTROLNET_CANNY,)
