"""A request as AUTOMATIC1111 infotext, and back: every image carries what re-creates it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from imagegen.version import __version__
from imagegen.errors import InvalidRequest
from imagegen.prompts.lora_tags import LoraSpec
from imagegen.outputs.metadata import format_infotext, parse_infotext
from imagegen.recipes import get_recipe
from imagegen.recipes.base import Recipe
from imagegen.request import GenerationRequest
from imagegen.models.schedulers import SchedulerChoice, from_a1111


# The options of recipes with more stages or frames: request field, infotext key, type.
_STAGE_KEYS: tuple[tuple[str, str, type], ...] = (
    ("decoder_steps", "Decoder steps", int),
    ("decoder_guidance_scale", "Decoder CFG scale", float),
    ("num_frames", "Frames", int),
    ("fps", "FPS", int),
    ("decode_chunk_size", "Decode chunk", int),  # SVD's temporal decoder mixes the frames decoded together
    ("motion_bucket_id", "Motion bucket", int),
    ("noise_aug_strength", "Noise augmentation", float),
)
FOREIGN_RECIPE = "sdxl"  # A1111/ComfyUI infotext names no recipe; a text prompt means a text-to-image model


def infotext_for(request: GenerationRequest, seed: int, sampler: SchedulerChoice,
                 lora_hashes: Sequence[tuple[LoraSpec, str]] = ()) -> str:
    """The infotext of one image of a resolved request; `seed` is that image's own seed.

    LoRAs are written as A1111 does: their `<lora:NAME:WEIGHT>` tags in the prompt (whether they came from
    the prompt or from --lora) and `Lora hashes: "NAME: HASH, ..."`.
    """
    recipe = get_recipe(request.recipe)
    prompt = " ".join([request.prompt, *(lora.tag() for lora in request.loras)]) if request.loras else request.prompt
    return format_infotext(
        prompt,
        request.negative_prompt or "",
        {
            "Steps": request.num_inference_steps,
            "Sampler": sampler.a1111_name,
            "Schedule type": sampler.a1111_schedule,
            "CFG scale": request.guidance_scale,
            "Denoising strength": request.strength,
            **{key: getattr(request, name) for name, key, _ in _STAGE_KEYS},
            "Seed": seed,
            "Size": f"{request.width}x{request.height}",
            "Model": request.model or recipe.models["base"].name,
            "ControlNet 0": _controlnet_unit(request, recipe) if recipe.control else None,
            "Lora hashes": ", ".join(f"{spec.name}: {digest}" for spec, digest in lora_hashes) or None,
            "Recipe": recipe.name,
            "Version": f"imagegen {__version__}",
        },
    )


def _controlnet_unit(request: GenerationRequest, recipe: Recipe) -> str:
    """A1111's ControlNet extension writes each unit as one quoted "Key: value, ..." text; the same keys here."""
    unit = {
        "Module": "none" if request.control_is_edges else "canny",
        "Model": request.controlnet or recipe.models["controlnet"].name,
        "Weight": request.controlnet_conditioning_scale,
    }
    if not request.control_is_edges:
        unit.update({"Threshold A": request.canny_low, "Threshold B": request.canny_high})
    return ", ".join(f"{key}: {value}" for key, value in unit.items())


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
        **_stage_options(params),
        **(_controlnet_options(params["ControlNet 0"], recipe) if "ControlNet 0" in params and recipe.control else {}),
    )


def _stage_options(params: dict[str, str]) -> dict[str, object]:
    try:
        return {name: kind(params[key]) for name, key, kind in _STAGE_KEYS if key in params}
    except ValueError as error:
        raise InvalidRequest(f"the image's parameters cannot be read: {error}") from None


def _controlnet_options(text: str, recipe: Recipe) -> dict[str, object]:
    """The options of our ControlNet unit (the control image itself must be given again, as an init image)."""
    unit = dict(part.split(": ", 1) for part in text.split(", ") if ": " in part)
    try:
        options: dict[str, object] = {"controlnet_conditioning_scale": float(unit["Weight"])} if "Weight" in unit else {}
        if unit.get("Module") == "none":
            options["control_is_edges"] = True
        options.update({name: int(unit[key]) for name, key in (("canny_low", "Threshold A"),
                                                                ("canny_high", "Threshold B")) if key in unit})
    except ValueError as error:
        raise InvalidRequest(f"the image's ControlNet parameters cannot be read: {error}") from None
    if unit.get("Model") not in (None, recipe.models["controlnet"].name):
        options["controlnet"] = unit["Model"]
    return options
