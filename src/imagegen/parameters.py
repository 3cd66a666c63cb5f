"""A request as AUTOMATIC1111 infotext, and back: every image carries what re-creates it.

An option with an `infotext` key in the option table is written and read under that key by its kind; the few whose
infotext form is not one value (the size, the sampler, the model, the ControlNet unit, the LoRA hashes, each image's
own seed) have a writer and a reader here. The table's order is the infotext's order, A1111's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from imagegen.errors import InvalidRequest
from imagegen.models.schedulers import SchedulerChoice, from_a1111
from imagegen.options import OPTIONS
from imagegen.outputs.metadata import format_infotext, parse_infotext
from imagegen.prompts.lora_tags import LoraSpec
from imagegen.recipes import get_recipe
from imagegen.recipes.base import Recipe
from imagegen.request import GenerationRequest
from imagegen.version import __version__

FOREIGN_RECIPE = "sdxl"  # A1111/ComfyUI infotext names no recipe; a text prompt means a text-to-image model


class _Image:
    """What the composite writers read: one image of a resolved request."""

    def __init__(self, request: GenerationRequest, recipe: Recipe, seed: int, sampler: SchedulerChoice,
                 lora_hashes: Sequence[tuple[LoraSpec, str]]) -> None:
        self.request, self.recipe, self.seed = request, recipe, seed
        self.sampler, self.lora_hashes = sampler, lora_hashes


def _controlnet_unit(image: _Image) -> str | None:
    """A1111's ControlNet extension writes each unit as one quoted "Key: value, ..." text; the same keys here."""
    request, recipe = image.request, image.recipe
    if not recipe.control:
        return None
    unit = {
        "Module": "none" if request.control_is_edges else "canny",
        "Model": request.controlnet or recipe.models["controlnet"].name,
        "Weight": request.controlnet_conditioning_scale,
    }
    if not request.control_is_edges:
        unit.update({"Threshold A": request.canny_low, "Threshold B": request.canny_high})
    return ", ".join(f"{key}: {value}" for key, value in unit.items())


# Options whose infotext is not one plain value: option name -> the keys and values it writes.
_WRITERS: dict[str, Callable[[_Image], dict[str, Any]]] = {
    "scheduler": lambda image: {"Sampler": image.sampler.a1111_name, "Schedule type": image.sampler.a1111_schedule},
    "seed": lambda image: {"Seed": image.seed},
    "width": lambda image: {"Size": f"{image.request.width}x{image.request.height}"},
    "model": lambda image: {"Model": image.request.model or image.recipe.models["base"].name},
    "loras": lambda image: {"Lora hashes": ", ".join(f"{spec.name}: {digest}"
                                                     for spec, digest in image.lora_hashes) or None},
    "controlnet": lambda image: {"ControlNet 0": _controlnet_unit(image)},
}


def infotext_for(request: GenerationRequest, seed: int, sampler: SchedulerChoice,
                 lora_hashes: Sequence[tuple[LoraSpec, str]] = ()) -> str:
    """The infotext of one image of a resolved request; `seed` is that image's own seed.

    LoRAs are written as A1111 does: their `<lora:NAME:WEIGHT>` tags in the prompt (whether they came from
    the prompt or from --lora) and `Lora hashes: "NAME: HASH, ..."`.
    """
    recipe = get_recipe(request.recipe)
    image = _Image(request, recipe, seed, sampler, lora_hashes)
    params: dict[str, Any] = {}
    for name, option in OPTIONS.items():
        if name in _WRITERS:
            params.update(_WRITERS[name](image))
        elif option.infotext:
            params[option.infotext] = getattr(request, name)
    params.update({"Recipe": recipe.name, "Version": f"imagegen {__version__}"})
    prompt = " ".join([request.prompt, *(lora.tag() for lora in request.loras)]) if request.loras else request.prompt
    return format_infotext(prompt, request.negative_prompt or "", params)


def request_from_infotext(text: str) -> GenerationRequest:
    """The single-image request that re-creates an image from its infotext (ours or A1111's).

    An img2img image replays only with its init image given again (--init-image), a ControlNet image with its
    control image.
    """
    info = parse_infotext(text)
    params = info.params
    recipe = get_recipe(params.get("Recipe", FOREIGN_RECIPE))
    try:
        options: dict[str, Any] = {name: option.kind(params[option.infotext]) for name, option in OPTIONS.items()
                                   if option.infotext and option.infotext in params}
        if "Size" in params:
            options["width"], options["height"] = (int(side) for side in params["Size"].split("x"))
    except ValueError as error:
        raise InvalidRequest(f"the image's parameters cannot be read: {error}") from None
    request = GenerationRequest(prompt=info.prompt, recipe=recipe.name, negative_prompt=info.negative_prompt,
                                **options)
    # Only our own infotext names a model we can load; A1111's names a checkpoint file of its own.
    model = params.get("Model") if "Recipe" in params else None
    scheduler = from_a1111(params["Sampler"], params.get("Schedule type")) if "Sampler" in params else None
    return replace(
        request,
        model=None if model in (None, recipe.models["base"].name) else model,
        scheduler=scheduler,
        **(_controlnet_options(params["ControlNet 0"], recipe) if "ControlNet 0" in params and recipe.control else {}),
    )


def _controlnet_options(text: str, recipe: Recipe) -> dict[str, object]:
    """The options of our ControlNet unit (the control image itself must be given again)."""
    unit = dict(part.split(": ", 1) for part in text.split(", ") if ": " in part)
    try:
        options: dict[str, object] = {}
        if "Weight" in unit:
            options["controlnet_conditioning_scale"] = float(unit["Weight"])
        if unit.get("Module") == "none":
            options["control_is_edges"] = True
        options.update({name: int(unit[key]) for name, key in (("canny_low", "Threshold A"),
                                                                ("canny_high", "Threshold B")) if key in unit})
    except ValueError as error:
        raise InvalidRequest(f"the image's ControlNet parameters cannot be read: {error}") from None
    if unit.get("Model") not in (None, recipe.models["controlnet"].name):
        options["controlnet"] = unit["Model"]
    return options
