"""The request and result types, and every limit a request is checked against (one place for all)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from imagegen.errors import InvalidRequest
from imagegen.outputs.formats import MAX_GIF_FPS, OUTPUT_FORMATS, VIDEO_FORMATS
from imagegen.prompts.lora_tags import MAX_LORAS, LoraSpec, split_lora_tags

if TYPE_CHECKING:
    from imagegen.recipes.base import Recipe

MIN_SIDE = 8  # recipes raise their own minimum (64 for the latent-diffusion ones)
MAX_SIDE = 4096
SIDE_MULTIPLE = 8
MAX_STEPS = 150
MAX_IMAGES = 16
MAX_GUIDANCE = 50.0
MAX_PROMPT_CHARS = 10_000
MAX_SEED = 2**32 - 1  # A1111's range; seed + i for image i stays far below torch's 2**64 limit
MAX_FRAMES = 64
MAX_FPS = 60
MAX_VIDEO_PIXELS = 1024 * 576 * 64  # width x height x frames: SVD-XT's size at 64 frames
# Options only some recipes have: a recipe takes one when its Defaults give it a value.
STAGE_OPTIONS = ("controlnet_conditioning_scale", "canny_low", "canny_high", "decoder_steps", "decoder_guidance_scale",
                 "num_frames", "fps", "decode_chunk_size", "motion_bucket_id", "noise_aug_strength")
DEFAULT_STRENGTH = 0.75  # A1111's default denoising strength for img2img
MAX_CONTROL_SCALE = 5.0
MAX_CANNY_THRESHOLD = 1000  # cv2.Canny compares gradient magnitudes, which reach about 1443 for 8-bit images


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
    output_format: str | None = None  # png for images, mp4 for videos
    init_image: str | None = None  # path: img2img starts from this image, noised to `strength`
    mask_image: str | None = None  # path: inpainting repaints where the mask is white
    strength: float | None = None
    loras: tuple[LoraSpec, ...] = ()  # besides the prompt's <lora:NAME:WEIGHT> tags; resolve merges both here
    control_image: str | None = None  # path: the ControlNet's condition (a photo to take edges from, or a map)
    control_is_edges: bool = False  # the control image is already the map the ControlNet wants: no Canny
    controlnet: str | None = None  # replaces the recipe's ControlNet (depth, pose... with a prepared map)
    controlnet_conditioning_scale: float | None = None
    canny_low: int | None = None
    canny_high: int | None = None
    decoder_steps: int | None = None  # two-stage recipes (Stable Cascade): the second stage's steps and CFG
    decoder_guidance_scale: float | None = None
    num_frames: int | None = None  # video recipes
    fps: int | None = None  # frames per second of the video (SVD is also conditioned on it)
    decode_chunk_size: int | None = None  # frames the VAE decodes at once: less memory (SVD: frames change slightly)
    motion_bucket_id: int | None = None  # SVD: how much motion, 0-255
    noise_aug_strength: float | None = None  # SVD: noise added to the input image; more gives more motion

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
            negative_prompt=d.negative_prompt if self.negative_prompt is None else self.negative_prompt,
            seed=secrets.randbelow(MAX_SEED + 1) if self.seed is None else self.seed,
            num_inference_steps=(d.img2img_steps if img2img and d.img2img_steps else d.num_inference_steps)
            if self.num_inference_steps is None else self.num_inference_steps,
            guidance_scale=d.guidance_scale if self.guidance_scale is None else self.guidance_scale,
            width=d.width if width is None else width,
            height=d.height if height is None else height,
            strength=(d.img2img_strength or DEFAULT_STRENGTH) if self.strength is None and img2img else self.strength,
            output_format=self.output_format or ("mp4" if recipe.video else "png"),
            **_fill(self, d, *STAGE_OPTIONS),
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
            _check_number("guidance_scale (guidance)", guidance, 0.0, MAX_GUIDANCE)
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
        if len(self.loras) > MAX_LORAS:
            raise InvalidRequest(f"at most {MAX_LORAS} LoRAs per request, got {len(self.loras)}")
        if self.decoder_steps is not None:
            _check_int("decoder_steps", self.decoder_steps, 1, MAX_STEPS)
        for name, high in (("decoder_guidance_scale", MAX_GUIDANCE),
                           ("controlnet_conditioning_scale", MAX_CONTROL_SCALE)):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), 0.0, high)
        for name in ("canny_low", "canny_high"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0, MAX_CANNY_THRESHOLD)
        if self.canny_low is not None and self.canny_high is not None and self.canny_low > self.canny_high:
            raise InvalidRequest(f"canny_low ({self.canny_low}) must not exceed canny_high ({self.canny_high})")
        if self.scheduler is not None:
            from imagegen.models.schedulers import get_scheduler_choice

            get_scheduler_choice(self.scheduler)
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS + VIDEO_FORMATS:
            formats = ", ".join(dict.fromkeys(OUTPUT_FORMATS + VIDEO_FORMATS))
            raise InvalidRequest(f"output format must be one of {formats}, got {self.output_format!r}")
        self._validate_video()

    def _validate_video(self) -> None:
        for name, low, high in (("num_frames", 1, MAX_FRAMES), ("fps", 1, MAX_FPS), ("motion_bucket_id", 0, 255),
                                ("decode_chunk_size", 1, MAX_FRAMES)):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), low, high)
        if self.noise_aug_strength is not None:
            _check_number("noise_aug_strength", self.noise_aug_strength, 0.0, 1.0)
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


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}, got {value}")


def _check_number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}, got {value:g}")


def _fill(request: GenerationRequest, defaults: object, *names: str) -> dict[str, object]:
    """The recipe's default for each option left None; options the recipe has no default for stay None."""
    return {name: getattr(defaults, name) if getattr(request, name) is None else getattr(request, name)
            for name in names}


def _check_side(name: str, value: object) -> None:
    _check_int(name, value, MIN_SIDE, MAX_SIDE)
    if value % SIDE_MULTIPLE:  # type: ignore[operator]
        raise InvalidRequest(f"{name} must be a multiple of {SIDE_MULTIPLE}, got {value}")
