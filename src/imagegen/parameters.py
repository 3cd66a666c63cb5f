"""A request as AUTOMATIC1111 infotext, and back: every image carries what re-creates it."""

from __future__ import annotations

from dataclasses import replace

from imagegen import __version__
from imagegen.errors import InvalidRequest
from imagegen.metadata import format_infotext, parse_infotext
from imagegen.recipes import get_recipe
from imagegen.request import GenerationRequest
from imagegen.schedulers import SchedulerChoice, from_a1111


FOREIGN_RECIPE = "sdxl"  # A1111/ComfyUI infotext names no recipe; a text prompt means a text-to-image model


def infotext_for(request: GenerationRequest, seed: int, sampler: SchedulerChoice) -> str:
    """The infotext of one image of a resolved request; `seed` is that image's own seed."""
    recipe = get_recipe(request.recipe)
    return format_infotext(
        request.prompt,
        request.negative_prompt or "",
        {
            "Steps": request.num_inference_steps,
            "Sampler": sampler.a1111_name,
            "Schedule type": sampler.a1111_schedule,
            "CFG scale": request.guidance_scale,
            "Denoising strength": request.strength,
            "Seed": seed,
            "Size": f"{request.width}x{request.height}",
            "Model": request.model or recipe.models["base"].name,
            "Recipe": recipe.name,
            "Version": f"imagegen {__version__}",
        },
    )


def request_from_infotext(text: str) -> GenerationRequest:
    """The single-image request that re-creates an image from its infotext (ours or A1111's)."""
    info = parse_infotext(text)
    params = info.params
    recipe = get_recipe(params.get("Recipe", FOREIGN_RECIPE))
    try:
        width, height = (int(v) for v in params["Size"].split("x")) if "Size" in params else (None, None)
        request = GenerationRequest(
            prompt=info.prompt,
            recipe=recipe.name,
            negative_prompt=info.negative_prompt,
            seed=int(params["Seed"]) if "Seed" in params else None,
            num_inference_steps=int(params["Steps"]) if "Steps" in params else None,
            guidance_scale=float(params["CFG scale"]) if "CFG scale" in params else None,
            # an img2img image replays only with its init image given again (--init-image)
            strength=float(params["Denoising strength"]) if "Denoising strength" in params else None,
            width=width,
            height=height,
        )
    except ValueError as error:
        raise InvalidRequest(f"the image's parameters cannot be read: {error}") from None
    # Only our own infotext names a model we can load; A1111's names a checkpoint file of its own.
    model = params.get("Model") if "Recipe" in params else None
    scheduler = from_a1111(params["Sampler"], params.get("Schedule type")) if "Sampler" in params else None
    return replace(
        request,
        model=None if model in (None, recipe.models["base"].name) else model,
        scheduler=scheduler,
    )
