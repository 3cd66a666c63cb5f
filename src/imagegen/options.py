"""The one table of request options: what each is, its limits, its help, and its name in every interface.

Everything else derives from `OPTIONS`: the fields of GenerationRequest and of a recipe's Defaults, the checks of
`validate`, the `imagegen generate` flags and their help, the native API's job body, the A1111 and OpenAI fields
that carry an option, and the infotext keys written into images and read back. Adding an option is one entry here
plus the code that uses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from imagegen.errors import InvalidRequest
from imagegen.outputs.formats import OUTPUT_FORMATS, VIDEO_FORMATS
from imagegen.prompts.lora_tags import LoraSpec

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
MAX_CONTROL_SCALE = 5.0
MAX_CANNY_THRESHOLD = 1000  # cv2.Canny compares gradient magnitudes, which reach about 1443 for 8-bit images
DEFAULT_RECIPE = "digits"  # the built-in model: the default works offline on a fresh machine
DEFAULT_STRENGTH = 0.75  # A1111's default denoising strength for img2img
# The opt-in speed-ups (`fast`), each changing pixels a little, so each is named in the infotext and replayed.
# imagegen.fast holds their code.
FAST_METHODS = {
    "tiny-vae": "decode with the tiny VAE (TAESD for SD 1.5, TAESDXL for SDXL): ~10x faster decoding",
    "bf16": "run in bfloat16 on a CPU with bf16 instructions (AVX512-BF16 or AMX), as a GPU runs in half precision",
    "step-cache": "reuse the denoiser's deep features between steps (DeepCache for UNets, first-block cache for DiT) "
                  "on 10+ steps: ~2x",
    "compile": "torch.compile the denoiser's repeated blocks (fused QKV, channels_last); the first image of a "
               "process compiles (cached on disk for the next), so it pays in servers and on GPUs",
    "int8": "int8 weight-only quantisation of the denoiser (torchao): half the memory",
    "fp8": "fp8 weight-only quantisation of the denoiser (torchao; a GPU of compute capability 8.9+)",
}
FAST_ALL = "all"
# What "all" (and the bare flag) turns on, wherever it applies: the methods that pay off on the first image. compile
# costs a compile per process and the quantisations a measured quality cost, so those are named explicitly
# ("all,compile").
FAST_IN_ALL = ("tiny-vae", "bf16", "step-cache")
STEP_CACHE_MIN_STEPS = 10  # below this, reusing every third step's features costs more quality than it saves


def _scheduler_names() -> Sequence[str]:
    from imagegen.models.schedulers import SCHEDULERS

    return tuple(SCHEDULERS)


@dataclass(frozen=True)
class Option:
    """One option of a GenerationRequest.

    `name` is diffusers' argument name where diffusers has one. An option with `per_recipe` takes its default from
    the recipe (a field of the recipe's Defaults); a `stage` option exists only for the recipes whose Defaults give
    it a value (a second stage, frames, a ControlNet), and is refused by the others rather than ignored.
    """

    name: str
    kind: type  # int, float, str or bool; LoraSpec for the list of LoRAs
    help: str
    group: str = "generation"  # the heading `imagegen generate --help` lists it under
    flag: str | None = None  # the CLI flag; None: --name with dashes; "" for none
    metavar: str | None = None
    low: float | None = None  # inclusive limits; for text, `high` is the most characters
    high: float | None = None
    multiple_of: int | None = None
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    default: Any = None  # the value when neither the request nor the recipe sets one
    per_recipe: bool = False
    stage: bool = False
    infotext: str | None = None  # the A1111 infotext key it is written under
    a1111: str | None = None  # the field of A1111's txt2img/img2img body that carries it
    openai: str | None = None  # the field of an OpenAI Images request that carries it (our extensions included)

    flag_alone: Any = None  # the value of the CLI flag given without one (argparse's const); None: it needs one

    @property
    def cli_flag(self) -> str | None:
        if self.flag == "":
            return None
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        """How error messages name the option: its field name, and its flag where that differs."""
        flag = (self.cli_flag or "").lstrip("-")
        return self.name if not flag or flag == self.name.replace("_", "-") else f"{self.name} ({flag})"

    @property
    def api_kind(self) -> Any:
        """The JSON type the APIs take: an option with a bare-flag value also takes true (that value) and false
        (unset), as `"fast": true`."""
        return self.kind if self.flag_alone is None else self.kind | bool

    def from_api(self, value: Any) -> Any:
        """An API's value as the request holds it (true/false for options with a bare-flag value)."""
        if self.flag_alone is not None and isinstance(value, bool):
            return self.flag_alone if value else None
        return value

    def allowed(self) -> Sequence[str] | None:
        return self.choices() if callable(self.choices) else self.choices

    def check(self, value: Any) -> None:
        """Raise InvalidRequest naming the option if `value` is of the wrong kind or outside the limits."""
        if value is None:
            return
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidRequest(f"{self.label} must be a whole number, got {value!r}")
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidRequest(f"{self.label} must be a finite number, got {value!r}")
        elif self.kind is bool:
            if not isinstance(value, bool):
                raise InvalidRequest(f"{self.label} must be true or false, got {value!r}")
        elif self.kind is str:
            if not isinstance(value, str):
                raise InvalidRequest(f"{self.label} must be text, got {value!r}")
            check_text(value, self.label)
            if self.high is not None and len(value) > self.high:
                raise InvalidRequest(f"{self.label} is limited to {self.high:.0f} characters")
            allowed = self.allowed()
            if allowed is not None and value not in allowed:
                raise InvalidRequest(f"unknown {self.label} {value!r}; choose one of {', '.join(allowed)}")
            return
        else:
            return
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            shown = str if self.kind is int else "{:g}".format
            raise InvalidRequest(f"{self.label} must be between {shown(self.low)} and {shown(self.high)}, "
                                 f"got {shown(value)}")
        if self.multiple_of and value % self.multiple_of:
            raise InvalidRequest(f"{self.label} must be a multiple of {self.multiple_of}, got {value}")


def check_text(text: str, what: str) -> None:
    """Raise InvalidRequest naming `what` unless `text` can be written as UTF-8. A lone UTF-16 surrogate ("\\ud800" in
    JSON, or an undecodable byte of a command line) is a valid Python str that no image's infotext, JSON answer or
    web page can hold: refused on the way in, else it is stored and then fails every time it is shown (issue 13)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidRequest(f"{what} is not valid text: character {error.start} is a lone surrogate "
                             f"({text[error.start]!r}), which no UTF-8 text can hold") from None


_IMAGES = "image inputs (img2img, inpainting)"
_CONTROL = "ControlNet recipes"
_CASCADE = "two-stage recipes (stable-cascade)"
_VIDEO = "video recipes"
_SPEED = "speed (opt-in; changes pixels a little, and the infotext records it)"

OPTIONS: dict[str, Option] = {option.name: option for option in (
    Option("prompt", str, "the text prompt; A1111's <lora:NAME:WEIGHT> tags apply LoRAs", flag="",
           high=MAX_PROMPT_CHARS, a1111="prompt", openai="prompt"),
    Option("recipe", str, "generation method", default=DEFAULT_RECIPE),
    Option("negative_prompt", str, "what the image should not show", flag="--negative", high=MAX_PROMPT_CHARS,
           per_recipe=True, default="", a1111="negative_prompt", openai="negative_prompt"),
    Option("num_inference_steps", int, "denoising steps", flag="--steps", metavar="N", low=1, high=MAX_STEPS,
           per_recipe=True, infotext="Steps", a1111="steps", openai="num_inference_steps"),
    Option("scheduler", str, "replace the recipe's scheduler (sampler)", choices=_scheduler_names),
    Option("guidance_scale", float, "classifier-free guidance scale", flag="--guidance", metavar="CFG", low=0.0,
           high=MAX_GUIDANCE, per_recipe=True, infotext="CFG scale", a1111="cfg_scale", openai="guidance_scale"),
    Option("strength", float, "img2img: how much of the init image to repaint, 0-1", group=_IMAGES, low=0.0,
           high=1.0, per_recipe=True, default=DEFAULT_STRENGTH, infotext="Denoising strength",
           a1111="denoising_strength"),
    Option("decoder_steps", int, "the decoder's steps (--steps and --guidance are the prior's)", group=_CASCADE,
           metavar="N", low=1, high=MAX_STEPS, per_recipe=True, stage=True, infotext="Decoder steps"),
    Option("decoder_guidance_scale", float, "the decoder's guidance", group=_CASCADE, flag="--decoder-guidance",
           metavar="CFG", low=0.0, high=MAX_GUIDANCE, per_recipe=True, stage=True, infotext="Decoder CFG scale"),
    Option("num_frames", int, "number of frames", group=_VIDEO, flag="--frames", metavar="N", low=1, high=MAX_FRAMES,
           per_recipe=True, stage=True, infotext="Frames"),
    Option("fps", int, "frames per second (SVD is also conditioned on it)", group=_VIDEO, low=1, high=MAX_FPS,
           per_recipe=True, stage=True, infotext="FPS"),
    # SVD's temporal decoder mixes the frames it decodes together: the chunk size changes its frames slightly.
    Option("decode_chunk_size", int, "frames the VAE decodes at once (less memory; SVD's frames change slightly)",
           group=_VIDEO, metavar="N", low=1, high=MAX_FRAMES, per_recipe=True, stage=True, infotext="Decode chunk"),
    Option("motion_bucket_id", int, "svd: amount of motion, 0-255", group=_VIDEO, flag="--motion-bucket",
           metavar="ID", low=0, high=255, per_recipe=True, stage=True, infotext="Motion bucket"),
    Option("noise_aug_strength", float, "svd: noise added to the input image, more gives more motion", group=_VIDEO,
           flag="--noise-aug", metavar="S", low=0.0, high=1.0, per_recipe=True, stage=True,
           infotext="Noise augmentation"),
    Option("seed", int, "seed of the first image; image i uses seed+i (default: random)", low=0, high=MAX_SEED,
           infotext="Seed", a1111="seed", openai="seed"),
    Option("width", int, "image width in pixels", low=MIN_SIDE, high=MAX_SIDE, multiple_of=SIDE_MULTIPLE,
           per_recipe=True, a1111="width"),
    Option("height", int, "image height in pixels", low=MIN_SIDE, high=MAX_SIDE, multiple_of=SIDE_MULTIPLE,
           per_recipe=True, a1111="height"),
    Option("num_images", int, "number of images", flag="-n", metavar="N", low=1, high=MAX_IMAGES, default=1,
           openai="n"),
    Option("model", str, "replace the recipe's base model: a local folder, a .safetensors file or a hub id"),
    Option("output_format", str, "image or video format (default: from -o's suffix, else png for images, mp4 for "
           "videos; frames: a folder of PNGs)", flag="--format",
           choices=tuple(dict.fromkeys(OUTPUT_FORMATS + VIDEO_FORMATS)), openai="output_format"),
    Option("init_image", str, "img2img: start from this image (resized to the output size); svd: the image to "
           "animate", group=_IMAGES, metavar="PATH"),
    Option("mask_image", str, "inpainting: repaint where this mask is white", group=_IMAGES, flag="--mask",
           metavar="PATH"),
    Option("loras", LoraSpec, "apply a LoRA (repeatable): a file, a name in the LoRA folder ($IMAGEGEN_LORA_DIR) or "
           "a hub id org/repo[/file.safetensors]; the prompt may also hold <lora:NAME:WEIGHT> tags", flag="--lora",
           metavar="NAME[:WEIGHT]", default=()),
    Option("control_image", str, "the photo to take Canny edges from (or the map itself, see --control-is-edges)",
           group=_CONTROL, metavar="PATH"),
    Option("control_is_edges", bool, "the control image is already the map the ControlNet wants: no Canny",
           group=_CONTROL, default=False),
    Option("controlnet", str, "use another SDXL ControlNet (depth, pose...) with a prepared --control-image",
           group=_CONTROL, metavar="ID_OR_PATH"),
    Option("controlnet_conditioning_scale", float, "ControlNet conditioning scale", group=_CONTROL,
           flag="--control-scale", metavar="W", low=0.0, high=MAX_CONTROL_SCALE, per_recipe=True, stage=True),
    Option("canny_low", int, "Canny low threshold", group=_CONTROL, metavar="T", low=0, high=MAX_CANNY_THRESHOLD,
           per_recipe=True, stage=True),
    Option("canny_high", int, "Canny high threshold", group=_CONTROL, metavar="T", low=0, high=MAX_CANNY_THRESHOLD,
           per_recipe=True, stage=True),
    Option("fast", str, "speed-ups, comma-separated: "
           + "; ".join(f"{name}: {text}" for name, text in FAST_METHODS.items())
           + f"; {FAST_ALL} (or the bare flag): {', '.join(FAST_IN_ALL)} where they apply", group=_SPEED,
           metavar="METHODS", high=200, flag_alone=FAST_ALL, infotext="Fast", a1111="fast", openai="fast"),
)}

STAGE_OPTIONS = tuple(name for name, option in OPTIONS.items() if option.stage)
