"""GenerationRequest: the options of one generation, built from the option table, and the rules between them."""

from __future__ import annotations

import dataclasses
import secrets
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from imagegen.errors import InvalidRequest, Notice
from imagegen.options import (
    FAST_ALL,
    FAST_IN_ALL,
    FAST_METHODS,
    MAX_SEED,
    MAX_SIDE,
    MIN_SIDE,
    OPTIONS,
    SIDE_MULTIPLE,
    STEP_CACHE_MIN_STEPS,
    check_text,
)
from imagegen.outputs.formats import MAX_GIF_FPS
from imagegen.prompts.lora_tags import MAX_LORAS, LoraSpec, split_lora_tags  # noqa: F401 - LoraSpec: the loras field's type

if TYPE_CHECKING:
    from imagegen.recipes.base import Recipe

MAX_VIDEO_PIXELS = 1024 * 576 * 64  # width x height x frames: SVD-XT's size at 64 frames
# The options a recipe's Defaults fill as they are (steps, size and strength have rules of their own in `resolve`).
_PLAIN_RECIPE_DEFAULTS = tuple(
    name for name, option in OPTIONS.items()
    if option.per_recipe and name not in ("num_inference_steps", "width", "height", "strength"))


class _RequestRules:
    """The behaviour of GenerationRequest; its fields come from the option table (see `_request_fields`)."""

    @property
    def task(self) -> str:
        """"txt2img", "img2img" or "inpaint": which pipeline of the recipe serves the request."""
        if self.mask_image is not None:
            return "inpaint"
        return "txt2img" if self.init_image is None else "img2img"

    def resolve(self, recipe: Recipe) -> GenerationRequest:
        """Fill the recipe's defaults and draw a seed if none was given, then validate everything.

        The result has no None left but `model` and `scheduler` (None there means the recipe's own) and the
        options of stages the recipe does not have, so it can be written into an image's infotext and
        replayed exactly. The prompt's LoRA tags move into `loras`, after those given as options.
        """
        d = recipe.defaults
        from imagegen.inputs import image_size

        width, height = self.width, self.height
        if self.control_image is not None and recipe.control:
            # Read (header only) now, so a bad control image fails before any model loads; without a size given,
            # the result has the control image's size, as in diffusers' ControlNet pipelines.
            fitted = [max(MIN_SIDE, min(MAX_SIDE, side - side % SIDE_MULTIPLE))
                      for side in image_size(self.control_image, what="control image")]
            width, height = width or fitted[0], height or fitted[1]
        if self.init_image is not None and recipe.image_conditioned:
            image_size(self.init_image, what="input image")
        img2img = self.init_image is not None and recipe.image_inputs
        prompt, tagged = split_lora_tags(self.prompt) if isinstance(self.prompt, str) else (self.prompt, ())
        filled = replace(
            self,
            prompt=prompt,
            loras=(*self.loras, *tagged),
            seed=secrets.randbelow(MAX_SEED + 1) if self.seed is None else self.seed,
            num_inference_steps=(d.img2img_steps if img2img and d.img2img_steps else d.num_inference_steps)
            if self.num_inference_steps is None else self.num_inference_steps,
            width=d.width if width is None else width,
            height=d.height if height is None else height,
            strength=d.strength if self.strength is None and img2img else self.strength,
            output_format=self.output_format or ("mp4" if recipe.video else "png"),
            **_fill(self, d, *_PLAIN_RECIPE_DEFAULTS),
        )
        filled.validate()
        recipe.check(filled)
        return replace(filled, fast=_usable_fast(self.fast, recipe, recipe.total_steps(filled)))

    def validate(self) -> None:
        """Check every option given against the option table, then the rules between options; raises
        InvalidRequest naming the option.

        Options still None (the recipe's default) pass here; `resolve` checks them once filled.
        """
        if not isinstance(self.prompt, str):
            raise InvalidRequest("prompt must be text")
        for name, option in OPTIONS.items():
            if name != "loras":
                option.check(getattr(self, name))
        if self.seed is not None and self.seed + self.num_images - 1 > MAX_SEED:
            raise InvalidRequest(f"seed + n - 1 must stay within {MAX_SEED} (image i uses seed + i)")
        if self.mask_image is not None and self.init_image is None:
            raise InvalidRequest("a mask needs an init image to repaint (--init-image)")
        if self.strength is not None:
            if self.init_image is None:
                raise InvalidRequest("strength applies to an init image (--init-image)")
            if self.strength == 0:
                raise InvalidRequest("strength must be more than 0: at 0 nothing of the init image is repainted")
            if self.num_inference_steps is not None and int(self.num_inference_steps * self.strength) < 1:
                raise InvalidRequest(f"steps x strength must reach 1 denoising step, got "
                                     f"{self.num_inference_steps} x {self.strength:g}; raise --steps or --strength")
        if len(self.loras) > MAX_LORAS:
            raise InvalidRequest(f"at most {MAX_LORAS} LoRAs per request, got {len(self.loras)}")
        for lora in self.loras:
            check_text(lora.name, "loras")
        fast_methods(self.fast)
        if self.canny_low is not None and self.canny_high is not None and self.canny_low > self.canny_high:
            raise InvalidRequest(f"canny_low ({self.canny_low}) must not exceed canny_high ({self.canny_high})")
        if self.output_format == "gif" and self.fps is not None and self.fps > MAX_GIF_FPS:
            raise InvalidRequest(f"a GIF plays at most {MAX_GIF_FPS} fps (browsers slow faster ones down), got {self.fps}")
        if self.num_frames is not None and self.width is not None and self.height is not None \
                and self.width * self.height * self.num_frames > MAX_VIDEO_PIXELS:
            raise InvalidRequest(f"{self.num_frames} frames of {self.width}x{self.height} are more than the "
                                 f"{MAX_VIDEO_PIXELS:,} pixels a video may have; use fewer frames or a smaller size")

    def image_seeds(self) -> list[int]:
        """The seed of each image: image i of a request with seed s uses s + i (the reproducibility contract)."""
        if self.seed is None:
            raise InvalidRequest("the request has no seed yet; resolve it against its recipe first")
        return [self.seed + i for i in range(self.num_images)]


def _fill(request: Any, defaults: object, *names: str) -> dict[str, object]:
    """The recipe's default for each option left None; options the recipe has no default for stay None."""
    return {name: getattr(defaults, name) if getattr(request, name) is None else getattr(request, name)
            for name in names}


def _request_fields() -> list[tuple[str, str, Any]]:
    """GenerationRequest's fields, in the table's order: None means "the recipe's default" unless the option has a
    default of its own that does not depend on the recipe (the recipe, one image, no LoRAs)."""
    fields = []
    for name, option in OPTIONS.items():
        if name == "prompt":
            fields.append((name, "str", dataclasses.field()))
        elif name == "loras":
            fields.append((name, "tuple[LoraSpec, ...]", dataclasses.field(default=())))
        else:
            default = None if option.per_recipe else option.default
            annotation = option.kind.__name__ + ("" if default is not None else " | None")
            fields.append((name, annotation, dataclasses.field(default=default)))
    return fields


GenerationRequest = dataclasses.make_dataclass(
    "GenerationRequest", _request_fields(), bases=(_RequestRules,), frozen=True,
    namespace={"__doc__": """What the user asked for; None means "the recipe's default" and is filled in by `resolve`.

    Field names are diffusers' argument names, so that a request maps onto a pipeline call without a translation
    table. The fields, their limits and help are the option table's (imagegen.options.OPTIONS).
    """})
GenerationRequest.__module__ = __name__


def fast_methods(value: str | None) -> tuple[str, ...]:
    """The methods a `fast` value names, in the table's order ("all": those of FAST_IN_ALL, plus any named beside
    it); raises on an unknown name."""
    names = _fast_names(value)
    return tuple(name for name in FAST_METHODS if name in names or (FAST_ALL in names and name in FAST_IN_ALL))


def _fast_names(value: str | None) -> list[str]:
    if value is None:
        return []
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAST_METHODS and name != FAST_ALL] or ([] if names else [""])
    if unknown:
        raise InvalidRequest(f"unknown fast method {unknown[0]!r}; choose from {', '.join(FAST_METHODS)}, "
                             f"or {FAST_ALL}")
    return names


def _usable_fast(value: str | None, recipe: Recipe, steps: int) -> str | None:
    """The methods of `value` that apply to the recipe at `steps` denoising steps, as the infotext records them. A
    named method that does not apply is left out with a Notice, never an error: the image is still made, at the
    usual speed. Those that "all" brings are left out silently, unless none applies."""
    named = _fast_names(value)
    asked = fast_methods(value)
    reasons = {name: f"does not apply to recipe {recipe.name}" for name in asked if name not in recipe.fast_methods}
    if "step-cache" in asked and "step-cache" not in reasons and steps < STEP_CACHE_MIN_STEPS:
        reasons["step-cache"] = f"{steps} steps are too few to reuse features between them " \
                                f"(it needs {STEP_CACHE_MIN_STEPS}+)"
    usable = [name for name in asked if name not in reasons]
    note_left_out({name: reason for name, reason in reasons.items() if name in named or not usable})
    return ",".join(usable) or None


def note_left_out(reasons: dict[str, str]) -> None:
    """One Notice per reason, naming the --fast methods left out for it."""
    methods: dict[str, list[str]] = {}
    for name, reason in reasons.items():
        methods.setdefault(reason, []).append(name)
    for reason, names in methods.items():
        warnings.warn(f"--fast {', '.join(names)}: {reason}; ignored", Notice, stacklevel=4)
