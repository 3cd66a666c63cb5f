"""Class-conditional Diffusion Transformers: facebook's ImageNet DiT-XL/2 and our built-in digits model.

Both take a class name or id as the prompt; DiT denoises VAE latents, the digits model 8x8 pixels.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from imagegen.errors import InvalidRequest
from imagegen.models.sources import LocalModel, ModelRef
from imagegen.recipes.base import BuildContext, Defaults, Recipe
from imagegen.recipes.class_labels import check_class_prompt, class_id
from imagegen.request import GenerationRequest

DIT_256 = ModelRef("facebook/DiT-XL-2-256")
DIT_512 = ModelRef("facebook/DiT-XL-2-512")


def builtin_digits_folder() -> Path:
    """The shipped weights, inside the installed package."""
    return Path(str(resources.files("imagegen.builtin") / "digits"))


def _dit(ctx: BuildContext) -> Any:
    from diffusers import DPMSolverMultistepScheduler

    from imagegen.pipelines.dit import ClassConditionalDiTPipeline

    pipe = ctx.pipeline(pipeline_class=ClassConditionalDiTPipeline)
    # diffusers' DiT example: DPM-Solver multistep at 25 steps instead of the repo's DDIM at 250.
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    return pipe


def _digits(ctx: BuildContext) -> Any:
    # diffusers-free: with the shipped folder's own classes, a digit takes a fraction of a second end to end.
    from imagegen.pipelines.class_conditional import PixelDiTPipeline

    return ctx.pipeline(pipeline_class=PixelDiTPipeline)


def _native_side(pipe: Any) -> int:
    vae = getattr(pipe, "vae", None)
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    return pipe.transformer.config.sample_size * scale


def _class_arguments(pipe: Any, request: GenerationRequest) -> dict[str, Any]:
    label = class_id(request.prompt, pipe.labels, pipe.transformer.config.num_embeds_ada_norm)
    return {
        "class_labels": [label] * request.num_images,
        "guidance_scale": request.guidance_scale,
        "num_inference_steps": request.num_inference_steps,
    }


def _class_labels(pipe: Any, prompts: list[str]) -> dict[str, Any]:
    """One class label per image of a batch."""
    return {"class_labels": [class_id(prompt, pipe.labels, pipe.transformer.config.num_embeds_ada_norm)
                             for prompt in prompts]}


def _latent_dit_arguments(pipe: Any, request: GenerationRequest) -> dict[str, Any]:
    side = _native_side(pipe)
    if (request.width, request.height) != (side, side):
        raise InvalidRequest(f"this DiT model generates {side}x{side} images only, "
                             f"got {request.width}x{request.height}")
    return _class_arguments(pipe, request)


def _pixel_dit_arguments(pipe: Any, request: GenerationRequest) -> dict[str, Any]:
    side = _native_side(pipe)
    if request.width % side or request.height % side:
        raise InvalidRequest(f"width and height must be multiples of the model's {side}-pixel size "
                             f"(the image is enlarged by whole pixels), got {request.width}x{request.height}")
    return _class_arguments(pipe, request)


def _enlarge(image: Any, request: GenerationRequest) -> Any:
    """Nearest-neighbour enlargement: each model pixel becomes a crisp block, nothing is invented."""
    from PIL import Image

    return image.resize((request.width, request.height), Image.Resampling.NEAREST)


DIT = Recipe(
    name="dit",
    summary="Class-conditional Diffusion Transformer DiT-XL/2 on ImageNet, 256x256",
    models={"base": DIT_256},
    # 25 DPM-Solver steps and guidance 4.0: diffusers' DiT example and the DiT paper's sampling scale.
    defaults=Defaults(num_inference_steps=25, guidance_scale=4.0, width=256, height=256),
    build=_dit,
    arguments=_latent_dit_arguments,
    check_prompt=check_class_prompt,
    batch_prompts=_class_labels,
    denoiser="transformer",
    step_cache="first-block",
)

DIT_512_RECIPE = replace(DIT, name="dit-512", summary="DiT-XL/2 on ImageNet, 512x512", models={"base": DIT_512},
                         defaults=replace(DIT.defaults, width=512, height=512))

DIGITS = Recipe(
    name="digits",
    summary="Built-in: a small DiT trained on scikit-learn's handwritten digits, runs offline",
    models={"base": LocalModel(builtin_digits_folder(), label="imagegen/digits")},
    # benchmarks/digits_eval.py: 15 steps at guidance 1.5 read as the asked digit 99.8% of the time with
    # 1.9% near-copies of training digits; guidance 4 copies more (5.8%) for no accuracy gained.
    defaults=Defaults(num_inference_steps=15, guidance_scale=1.5, width=256, height=256),
    build=_digits,
    arguments=_pixel_dit_arguments,
    check_prompt=check_class_prompt,
    batch_prompts=_class_labels,
    postprocess=_enlarge,
    gpu_dtype="float32",  # 1 M parameters: half precision would save nothing and cost accuracy
    denoiser=None,  # 1 M parameters in imagegen's own classes: nothing to gain
    min_side=8,
)

RECIPES = (DIGITS, DIT, DIT_512_RECIPE)
