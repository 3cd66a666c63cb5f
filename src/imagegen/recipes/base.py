"""What a recipe is: data (models, defaults, precision) plus one small build function.

The engine knows nothing about any particular recipe: it resolves the request against the recipe's
defaults, asks the recipe to assemble a pipeline from shared components (`BuildContext`), and calls
that pipeline with the arguments the recipe derives from the request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imagegen.errors import InvalidRequest
from imagegen.request import GenerationRequest
from imagegen.sources import LocalModel, ModelRef


@dataclass(frozen=True)
class Defaults:
    """The seed's parameters for a recipe; every request option left out takes these."""

    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    negative_prompt: str = ""


class BuildContext(Protocol):
    """What a recipe's build function may ask the engine for; every component it returns is shared."""

    request: GenerationRequest

    def model(self, role: str) -> ModelRef | LocalModel:
        """The recipe's model for `role`; "base" is the one `--model` replaces."""

    def folder(self, role: str) -> Path:
        """The local folder of the model for `role`, fetched if needed."""

    def pipeline(self, role: str = "base", *, pipeline_class: type | None = None, **replace: Any) -> Any:
        """The pipeline in the `role` model's folder, with the given components replacing its own.

        `pipeline_class` overrides the class named in the folder's model_index.json (our own pipelines).
        """

    def component(self, role: str, class_name: str, *, subfolder: str | None = None,
                  library: str = "diffusers") -> Any:
        """One component stored in the `role` model's folder (at its root when `subfolder` is None)."""

    def unet_from_file(self, role: str, *, config_role: str = "base") -> Any:
        """A UNet with `config_role`'s architecture and weights from the `role` repo's file for this step count."""


BuildFn = Callable[[BuildContext], Any]
ArgumentsFn = Callable[[Any, GenerationRequest], dict[str, Any]]
PostprocessFn = Callable[[Any, GenerationRequest], Any]


def text_to_image_arguments(pipe: Any, request: GenerationRequest) -> dict[str, Any]:
    """The pipeline call of a text-to-image recipe, and of its img2img and inpainting forms.

    An empty negative prompt is passed as None, as the seed's code does by leaving it out: SDXL then
    uses zero embeddings (force_zeros_for_empty_prompt) where "" would encode the empty text.
    Init images and masks are resized to the requested size, as A1111 does.
    """
    import inspect

    from imagegen.images import load_image

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
    image_inputs: bool = False  # takes init images (img2img) and masks (inpainting) through diffusers' AutoPipelines
    gpu_dtype: str = "float16"
    allowed_steps: tuple[int, ...] | None = None  # distilled UNets exist for these step counts only
    cache_key: Callable[[GenerationRequest], object] = field(default=lambda request: None)

    def check(self, request: GenerationRequest) -> None:
        """Recipe-specific limits, after the general ones."""
        if request.init_image is not None and not self.image_inputs:
            raise InvalidRequest(f"recipe {self.name} does not take an init image or mask")
        for name in ("width", "height"):
            if getattr(request, name) < self.min_side:
                raise InvalidRequest(f"{name} must be at least {self.min_side} for recipe {self.name}, "
                                     f"got {getattr(request, name)}")
        if self.allowed_steps and request.num_inference_steps not in self.allowed_steps:
            steps = ", ".join(map(str, self.allowed_steps))
            raise InvalidRequest(
                f"recipe {self.name} has models for {steps} steps only, got {request.num_inference_steps}"
            )
