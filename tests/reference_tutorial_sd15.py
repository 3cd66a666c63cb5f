"""The reference tutorial's SD 1.5 snippets (its majicmix + Dunhuang LoRA section) with plain diffusers, as imagegen's
reference.

Like reference_tutorial.py: line by line as the tutorial has them, changed only where tests need it (float32 on the
CPU, a seeded CPU generator per image, a small size).  The tutorial's ``snapshot_download`` calls are the caller's: it
passes the folders, e.g. those tiny_sd15.write_majicmix_modelscope and write_dunhuang_modelscope return.
`sd15` and `sd15_img2img` run the default SD 1.5 repo, looked up through huggingface_hub (``HF_HUB_CACHE``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from reference_tutorial import DEVICE, _generators
from tiny_sd15 import MAJICMIX_SUBFOLDER, SD15

if TYPE_CHECKING:
    from PIL.Image import Image


def sd15_lora(
    model_dir: Path | str,
    lora_dir: Path | str | None,
    weight_name: str | None,
    prompt: str,
    *,
    seed: int,
    steps: int = 50,
    guidance: float = 7.5,
    width: int = 64,
    height: int = 64,
    num_images: int = 1,
    subfolder: str = MAJICMIX_SUBFOLDER,
) -> list[Image]:
    """The reference tutorial's LoRA section::

        pipeline = AutoPipelineForText2Image.from_pretrained(f"{model_dir}/v7", torch_dtype=torch.float16).to("cuda")
        pipeline.load_lora_weights(lora_dir, weight_name="dunhuang.safetensors")
        image = pipeline(prompt).images[0]

    ``steps`` and ``guidance`` default to the pipeline's own defaults, which the tutorial's bare call gets.  No LoRA
    is loaded when ``lora_dir`` is None; ``subfolder=""`` takes a pipeline folder that is ``model_dir`` itself.
    """
    import torch
    from diffusers import AutoPipelineForText2Image

    pipeline_dir = f"{model_dir}/{subfolder}" if subfolder else str(model_dir)
    pipeline = AutoPipelineForText2Image.from_pretrained(pipeline_dir, torch_dtype=torch.float32).to(DEVICE)
    if lora_dir is not None:
        pipeline.load_lora_weights(str(lora_dir), weight_name=weight_name)
    return pipeline(
        prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=width,
        height=height,
        num_images_per_prompt=num_images,
        generator=_generators(seed, num_images),
    ).images


def sd15(
    prompt: str,
    *,
    seed: int,
    steps: int = 50,
    guidance: float = 7.5,
    width: int = 64,
    height: int = 64,
    negative_prompt: str | None = None,
    num_images: int = 1,
) -> list[Image]:
    """Stable Diffusion 1.5 with its own PNDM scheduler and without the safety checker, as imagegen runs it
    (like A1111 and ComfyUI): a flagged image would come back black, which no test could compare."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SD15, safety_checker=None, torch_dtype=torch.float32).to(DEVICE)
    return pipe(
        prompt=prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=width,
        height=height,
        num_images_per_prompt=num_images,
        generator=_generators(seed, num_images),
    ).images


def sd15_img2img(prompt: str, init_image: Image, *, seed: int, steps: int = 50, strength: float = 0.8,
                 guidance: float = 7.5, num_images: int = 1) -> list[Image]:
    """diffusers' img2img on SD 1.5 (AutoPipelineForImage2Image's defaults for steps, strength and guidance)."""
    import torch
    from diffusers import AutoPipelineForImage2Image

    pipe = AutoPipelineForImage2Image.from_pretrained(SD15, safety_checker=None, torch_dtype=torch.float32)
    pipe.to(DEVICE)
    return pipe(prompt, image=init_image, num_inference_steps=steps, strength=strength, guidance_scale=guidance,
                num_images_per_prompt=num_images, generator=_generators(seed, num_images)).images
