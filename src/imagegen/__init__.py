"""imagegen: fast diffusion image generation from one engine, command line and (later) HTTP service.

Importing this package is cheap: torch and diffusers load only when an image is generated.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from imagegen.version import __version__

if TYPE_CHECKING:
    from imagegen.engine import Engine
    from imagegen.outputs.results import GeneratedImage

__all__ = ["Engine", "EngineOptions", "GenerationRequest", "GeneratedImage", "LoraSpec", "generate", "__version__"]


def __getattr__(name: str) -> Any:
    """Expose the engine types lazily, so `import imagegen` does not import torch."""
    if name in ("Engine", "EngineOptions"):
        from imagegen import engine

        return getattr(engine, name)
    if name == "GenerationRequest":
        from imagegen.request import GenerationRequest

        return GenerationRequest
    if name == "GeneratedImage":
        from imagegen.outputs.results import GeneratedImage

        return GeneratedImage
    if name == "LoraSpec":
        from imagegen.prompts.lora_tags import LoraSpec

        return LoraSpec
    raise AttributeError(f"module 'imagegen' has no attribute {name!r}")


@cache
def default_engine() -> Engine:
    """The engine `generate` uses: created on first use, then kept warm for the process."""
    from imagegen.engine import Engine

    return Engine()


def generate(prompt: str, recipe: str | None = None, **options: Any) -> list[GeneratedImage]:
    """Generate images with the default engine; options are GenerationRequest's fields.

    `loras` may list "NAME[:WEIGHT]" texts as well as LoraSpec objects.
    """
    from dataclasses import fields

    from imagegen.errors import InvalidRequest
    from imagegen.options import DEFAULT_RECIPE
    from imagegen.prompts.lora_tags import LoraSpec
    from imagegen.request import GenerationRequest

    known = {f.name for f in fields(GenerationRequest)} - {"prompt", "recipe"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidRequest(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "loras" in options:
        options["loras"] = tuple(LoraSpec.parse(lora) if isinstance(lora, str) else lora for lora in options["loras"])
    return default_engine().generate(GenerationRequest(prompt=prompt, recipe=recipe or DEFAULT_RECIPE, **options))
