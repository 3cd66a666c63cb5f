"""The request and result types, and every limit a request is checked against (one place for all)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from imagegen.errors import InvalidRequest

if TYPE_CHECKING:
    from PIL import Image

    from imagegen.recipes.base import Recipe

MIN_SIDE = 8  # recipes raise their own minimum (64 for the latent-diffusion ones)
MAX_SIDE = 4096
SIDE_MULTIPLE = 8
MAX_STEPS = 150
MAX_IMAGES = 16
MAX_GUIDANCE = 50.0
MAX_PROMPT_CHARS = 10_000
MAX_SEED = 2**32 - 1  # A1111's range; seed + i for image i stays far below torch's 2**64 limit
OUTPUT_FORMATS = ("png", "jpeg", "webp")
DEFAULT_STRENGTH = 0.75  # A1111's default denoising strength for img2img


@dataclass(frozen=True)
class GenerationRequest:
    """What the user asked for; None means "the recipe's default" and is filled in by `resolve`.

    Field names are diffusers' argument names, so that a request maps onto a pipeline call without
    a translation table.
    """

    prompt: str
    recipe: str
    negative_prompt: str | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    scheduler: str | None = None
    model: str | None = None
    output_format: str = "png"
    init_image: str | None = None  # path: img2img starts from this image, noised to `strength`
    mask_image: str | None = None  # path: inpainting repaints where the mask is white
    strength: float | None = None

    @property
    def task(self) -> str:
        """"txt2img", "img2img" or "inpaint": which pipeline of the recipe serves the request."""
        if self.mask_image is not None:
            return "inpaint"
        return "txt2img" if self.init_image is None else "img2img"

    def resolve(self, recipe: Recipe) -> GenerationRequest:
        """Fill the recipe's defaults and draw a seed if none was given, then validate everything.

        The result has no None left but `model` and `scheduler` (None there means the recipe's own),
        so it can be written into an image's infotext and replayed exactly.
        """
        d = recipe.defaults
        filled = replace(
            self,
            negative_prompt=d.negative_prompt if self.negative_prompt is None else self.negative_prompt,
            seed=secrets.randbelow(MAX_SEED + 1) if self.seed is None else self.seed,
            num_inference_steps=d.num_inference_steps if self.num_inference_steps is None else self.num_inference_steps,
            guidance_scale=d.guidance_scale if self.guidance_scale is None else self.guidance_scale,
            width=d.width if self.width is None else self.width,
            height=d.height if self.height is None else self.height,
            strength=DEFAULT_STRENGTH if self.strength is None and self.init_image is not None else self.strength,
        )
        filled.validate()
        recipe.check(filled)
        return filled

    def validate(self) -> None:
        """Check the recipe-independent limits of the options given; raises InvalidRequest naming the option.

        Options still None (the recipe's default) pass here; `resolve` checks them once filled.
        """
        if not isinstance(self.prompt, str):
            raise InvalidRequest("prompt must be text")
        if len(self.prompt) > MAX_PROMPT_CHARS or len(self.negative_prompt or "") > MAX_PROMPT_CHARS:
            raise InvalidRequest(f"prompt and negative prompt are limited to {MAX_PROMPT_CHARS} characters")
        for name in ("width", "height"):
            if getattr(self, name) is not None:
                _check_side(name, getattr(self, name))
        if self.num_inference_steps is not None:
            _check_int("num_inference_steps (steps)", self.num_inference_steps, 1, MAX_STEPS)
        _check_int("num_images (n)", self.num_images, 1, MAX_IMAGES)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
            if self.seed + self.num_images - 1 > MAX_SEED:
                raise InvalidRequest(f"seed + n - 1 must stay within {MAX_SEED} (image i uses seed + i)")
        guidance = self.guidance_scale
        if guidance is not None:
            if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
                raise InvalidRequest(f"guidance_scale (guidance) must be a finite number, got {guidance!r}")
            if not 0.0 <= guidance <= MAX_GUIDANCE:
                raise InvalidRequest(f"guidance_scale (guidance) must be between 0 and {MAX_GUIDANCE:g}, got {guidance:g}")
        if self.mask_image is not None and self.init_image is None:
            raise InvalidRequest("a mask needs an init image to repaint (--init-image)")
        if self.strength is not None:
            if self.init_image is None:
                raise InvalidRequest("strength applies to an init image (--init-image)")
            if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) \
                    or not 0.0 < self.strength <= 1.0:
                raise InvalidRequest(f"strength must be a number in (0, 1], got {self.strength!r}")
            if self.num_inference_steps is not None and int(self.num_inference_steps * self.strength) < 1:
                raise InvalidRequest(f"steps x strength must reach 1 denoising step, got "
                                     f"{self.num_inference_steps} x {self.strength:g}; raise --steps or --strength")
        if self.scheduler is not None:
            from imagegen.schedulers import get_scheduler_choice

            get_scheduler_choice(self.scheduler)
        if self.output_format not in OUTPUT_FORMATS:
            raise InvalidRequest(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")

    def image_seeds(self) -> list[int]:
        """The seed of each image: image i of a request with seed s uses s + i (the reproducibility contract)."""
        if self.seed is None:
            raise InvalidRequest("the request has no seed yet; resolve it against its recipe first")
        return [self.seed + i for i in range(self.num_images)]


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}, got {value}")


def _check_side(name: str, value: object) -> None:
    _check_int(name, value, MIN_SIDE, MAX_SIDE)
    if value % SIDE_MULTIPLE:  # type: ignore[operator]
        raise InvalidRequest(f"{name} must be a multiple of {SIDE_MULTIPLE}, got {value}")


@dataclass
class GeneratedImage:
    """One generated image with everything needed to reproduce it."""

    image: Image.Image
    seed: int
    infotext: str
    request: GenerationRequest = field(repr=False)

    def save(self, path: str | Path) -> Path:
        """Write the image with its infotext embedded, in the request's output format."""
        from imagegen.errors import OutputError
        from imagegen.metadata import save_image

        try:
            return save_image(self.image, Path(path), self.infotext, image_format=self.request.output_format)
        except OSError as error:
            raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
