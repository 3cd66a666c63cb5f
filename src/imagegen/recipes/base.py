"""What a recipe is: data (models, defaults, precision) plus one small build function.

The engine knows nothing about any particular recipe: it resolves the request against the recipe's
defaults, asks the recipe to assemble a pipeline from shared components (`BuildContext`), and calls
that pipeline with the arguments the recipe derives from the request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imagegen.errors import InvalidRequest
from imagegen.models.sources import LocalModel, ModelRef
from imagegen.options import OPTIONS, STAGE_OPTIONS
from imagegen.outputs.formats import OUTPUT_FORMATS, VIDEO_FORMATS
from imagegen.request import GenerationRequest


def _defaults_fields() -> list[tuple[str, str, Any]]:
    """Defaults' fields: the option table's per-recipe options (required unless the table gives a fallback or the
    option belongs to a stage only some recipes have), then the img2img values where they differ."""
    fields = []
    for name, option in OPTIONS.items():
        if option.per_recipe:
            required = option.default is None and not option.stage
            default = dataclasses.field() if required else dataclasses.field(default=option.default)
            fields.append((name, f"{option.kind.__name__}{'' if required else ' | None'}", default))
    # img2img's steps where they differ (SDXL-Turbo's model card: 2 steps x strength 0.5, since one step at A1111's
    # strength 0.75 would denoise for no step at all).
    fields.append(("img2img_steps", "int | None", dataclasses.field(default=None)))
    return fields


Defaults = dataclasses.make_dataclass("Defaults", _defaults_fields(), frozen=True, kw_only=True, namespace={
    "__doc__": """The recipe's parameters (its model card's or reference code's); every request option left out takes
    these. A stage option left None means the recipe has no such stage or input."""})
Defaults.__module__ = __name__


class BuildContext(Protocol):
    """What a recipe's build function may ask the engine for; every component it returns is shared."""

    request: GenerationRequest

    def model(self, role: str) -> ModelRef | LocalModel:
        """The recipe's model for `role`; "base" is the one `--model` replaces."""

    def folder(self, role: str) -> Path:
        """The local folder of the model for `role`, fetched if needed."""

    def pipeline(self, role: str = "base", *, pipeline_class: type | None = None, without: tuple[str, ...] = (),
                 **replace: Any) -> Any:
        """The pipeline in the `role` model's folder, with the given components replacing its own.

        `pipeline_class` overrides the class named in the folder's model_index.json (our own pipelines, or
        another diffusers pipeline on the same components); `without` names folder components it leaves out.
        """

    def component(self, role: str, class_name: str, *, subfolder: str | None = None,
                  library: str = "diffusers") -> Any:
        """One component stored in the `role` model's folder (at its root when `subfolder` is None)."""

    def model_from_file(self, role: str, *, config_role: str = "base", class_name: str = "UNet2DConditionModel",
                        subfolder: str | None = "unet") -> Any:
        """A `class_name` model with `config_role`'s architecture (its config in `subfolder`) and weights from the
        `role` repo's file for this step count."""


BuildFn = Callable[[BuildContext], Any]
ArgumentsFn = Callable[[Any, GenerationRequest], dict[str, Any]]
PostprocessFn = Callable[[Any, GenerationRequest], Any]


def prompt_list(pipe: Any, prompts: list[str]) -> dict[str, Any]:
    """Text pipelines take a list of prompts."""
    return {"prompt": prompts}


def text_to_image_arguments(pipe: Any, request: GenerationRequest) -> dict[str, Any]:
    """The pipeline call of a text-to-image recipe, and of its img2img and inpainting forms.

    An empty negative prompt is passed as None, as the reference tutorial's code does by leaving it out: SDXL then
    uses zero embeddings (force_zeros_for_empty_prompt) where "" would encode the empty text.
    Init images and masks are resized to the requested size, as A1111 does.
    """
    import inspect

    from imagegen.inputs import load_image

    arguments = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt or None,
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "width": request.width,
        "height": request.height,
        "num_images_per_prompt": request.num_images,
    }
    if request.init_image is not None:
        size = (request.width, request.height)
        arguments["image"] = load_image(request.init_image, what="init image").resize(size)
        arguments["strength"] = request.strength
    if request.mask_image is not None:
        arguments["mask_image"] = load_image(request.mask_image, what="mask", mode="L").resize(size)
    accepted = inspect.signature(pipe.__call__).parameters
    return {name: value for name, value in arguments.items() if name in accepted}


def unchanged(image: Any, request: GenerationRequest) -> Any:
    return image


@dataclass(frozen=True)
class Recipe:
    """A generation method as data; see the recipes package for the instances."""

    name: str
    summary: str
    models: Mapping[str, ModelRef | LocalModel]  # role -> model; "base" is what `--model` replaces
    defaults: Defaults
    build: BuildFn
    arguments: ArgumentsFn = text_to_image_arguments  # the pipeline call, from the loaded pipeline and request
    postprocess: PostprocessFn = unchanged  # applied to each PIL image the pipeline returns
    min_side: int = 64
    side_multiple: int = 8  # sizes must be multiples of this (Stable Cascade's latent needs 128)
    image_inputs: bool = False  # takes init images (img2img) and masks (inpainting) through diffusers' AutoPipelines
    image_conditioned: bool = False  # needs an init image, which its pipeline takes as is (SVD animates it)
    video: bool = False  # the pipeline returns frames; results are GeneratedVideo
    max_frames: int | None = None  # below the general limit where the model's temporal layers stop
    takes_prompt: bool = True  # SVD is conditioned on its input image only
    # Refuses a prompt the model cannot read, before anything loads: given the prompt and the base model (None when
    # the request replaces it, whose classes are known only once loaded). None: any text is a prompt.
    check_prompt: Callable[[str, ModelRef | LocalModel | None], None] | None = None
    one_seed_per_call: bool = False  # batch members would influence each other (SVD)
    # The call arguments that make one image per prompt (one per image of the batch): requests that differ only in
    # prompt and seed may then share one call (a server's batching). None: its pipeline cannot.
    batch_prompts: Callable[[Any, list[str]], dict[str, Any]] | None = None
    takes_loras: bool = False
    tiny_vae: ModelRef | None = None  # the TAESD-family VAE that `--fast tiny-vae` decodes with
    # The pipeline attribute holding the model that denoises at every step: what `--fast compile`, int8 and fp8
    # treat. None: a pipeline of several denoisers (Stable Cascade) or none of diffusers' (the built-in digits).
    denoiser: str | None = "unet"
    step_cache: str | None = None  # `--fast step-cache`: "deepcache" (a UNet's deep features) or "first-block" (DiT)
    scheduler_choice: bool = True  # --scheduler may replace the (first) scheduler
    scheduler_slots: tuple[str, ...] = ("scheduler",)  # the pipeline's schedulers, one per denoising stage
    gpu_dtype: str = "float16"
    role_gpu_dtypes: Mapping[str, str] = field(default_factory=dict)  # roles whose GPU dtype differs
    gpu_offload: str = "none"  # what --offload auto means on a GPU
    allowed_steps: tuple[int, ...] | None = None  # distilled UNets exist for these step counts only
    cache_key: Callable[[GenerationRequest], object] = field(default=lambda request: None)

    @property
    def fast_methods(self) -> tuple[str, ...]:
        """The `--fast` methods (options.FAST_METHODS) that apply to this recipe (bf16: those that run in half
        precision on a GPU; the engine also checks the device)."""
        methods = []
        if self.tiny_vae:
            methods.append("tiny-vae")
        if self.gpu_dtype != "float32":
            methods.append("bf16")
        if self.step_cache:
            methods.append("step-cache")
        if self.denoiser:
            methods.extend(("compile", "int8", "fp8"))
        return tuple(methods)

    @property
    def control(self) -> bool:
        """A ControlNet recipe: it needs a control image."""
        return "controlnet" in self.models

    def total_steps(self, request: GenerationRequest) -> int:
        """Denoising steps a resolved request runs: img2img skips the first (1 - strength) of the schedule
        (as diffusers' get_timesteps), and a second stage adds its own."""
        steps = request.num_inference_steps
        if request.strength is not None:
            steps = min(int(steps * request.strength), steps)
        return steps + (request.decoder_steps or 0)

    def check(self, request: GenerationRequest) -> None:
        """Recipe-specific limits, after the general ones: options the recipe has no use for are errors,
        never silently dropped."""
        takes_image = self.image_inputs or self.image_conditioned
        refused = {
            "an init image": request.init_image is not None and not takes_image,
            "a mask (inpainting)": request.mask_image is not None and not self.image_inputs,
            "a strength": request.strength is not None and not self.image_inputs,
            "LoRAs": bool(request.loras) and not self.takes_loras,
            "a control image": request.control_image is not None and not self.control,
            "--controlnet or --control-is-edges": (request.controlnet is not None or request.control_is_edges)
            and not self.control,
            "--scheduler": request.scheduler is not None and not self.scheduler_choice,
            **{name: getattr(request, name) is not None and getattr(self.defaults, name) is None
               for name in STAGE_OPTIONS},
        }
        for what, is_refused in refused.items():
            if is_refused:
                raise InvalidRequest(f"recipe {self.name} does not take {what}")
        formats = VIDEO_FORMATS if self.video else OUTPUT_FORMATS
        if request.output_format not in formats:
            raise InvalidRequest(f"recipe {self.name} writes {'videos' if self.video else 'images'}: "
                                 f"choose one of {', '.join(formats)}, not {request.output_format}")
        if request.prompt and not self.takes_prompt:
            raise InvalidRequest(f"recipe {self.name} takes no prompt: it is conditioned on the input image only")
        if self.check_prompt is not None:
            self.check_prompt(request.prompt, None if request.model else self.models["base"])
        if self.max_frames and request.num_frames > self.max_frames:
            raise InvalidRequest(f"recipe {self.name} makes at most {self.max_frames} frames, got {request.num_frames}")
        if self.image_conditioned and request.init_image is None:
            raise InvalidRequest(f"recipe {self.name} needs an input image (--init-image PATH)")
        if self.control and request.control_image is None:
            raise InvalidRequest(f"recipe {self.name} needs a control image (--control-image PATH)")
        for name in ("width", "height"):
            value = getattr(request, name)
            if value < self.min_side:
                raise InvalidRequest(f"{name} must be at least {self.min_side} for recipe {self.name}, got {value}")
            if value % self.side_multiple:
                raise InvalidRequest(f"{name} must be a multiple of {self.side_multiple} for recipe {self.name}, "
                                     f"got {value}")
        if self.allowed_steps and request.num_inference_steps not in self.allowed_steps:
            steps = ", ".join(map(str, self.allowed_steps))
            raise InvalidRequest(
                f"recipe {self.name} has models for {steps} steps only, got {request.num_inference_steps}"
            )
