"""The reference tutorial's SDXL canny ControlNet snippet as a reference recipe, in plain diffusers.

It follows the snippet line by line, changed only where tests need it, as tests/reference_tutorial.py does: Hugging
Face repo ids (looked up through huggingface_hub, so ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` decide where they come
from) instead of ModelScope folders, float32 on the CPU instead of float16 with ``enable_model_cpu_offload()`` (that
call moves each model to the GPU only while it runs, which needs an accelerator; on the CPU everything already sits
where it runs), a seeded CPU generator, and a step count that tests may lower.  The snippet passes no step count,
guidance or size, so the defaults are StableDiffusionXLControlNetPipeline's own (diffusers 0.42.1): 50 steps,
guidance 5.0, and an output the size of the control image rounded down to a multiple of the VAE's scale factor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reference_tutorial import DEVICE, _generators
from tiny_controlnet import CONTROLNET_CANNY, VAE_FP16_FIX
from tiny_models import SDXL_BASE

if TYPE_CHECKING:
    from PIL.Image import Image

# StableDiffusionXLControlNetPipeline.__call__ defaults, which the reference tutorial relies on by not passing these.
PIPELINE_DEFAULT_STEPS = 50
PIPELINE_DEFAULT_GUIDANCE = 5.0


def sdxl_controlnet_canny(
    prompt: str,
    control_source: Image,
    *,
    seed: int,
    steps: int = PIPELINE_DEFAULT_STEPS,
    guidance: float = PIPELINE_DEFAULT_GUIDANCE,
    negative_prompt: str = "low quality, bad quality, sketches",
    controlnet_conditioning_scale: float = 0.5,
    low: int = 100,
    high: int = 200,
    controlnet_id: str = CONTROLNET_CANNY,
    preprocess: bool = True,
    num_images: int = 1,
) -> tuple[list[Image], Image]:
    """SDXL base with the canny ControlNet and the fp16-fix VAE; returns the images and the control image used.

    ``control_source`` is the photo the reference tutorial loads with ``load_image``; its Canny edges (``low``/``high``
    thresholds) become the control image, or, with ``preprocess=False``, it is used as the control image as is
    (an edge or depth map made elsewhere).  No height or width is passed, as in the tutorial: the pipeline takes the
    control image's size, floored to a multiple of the VAE scale factor, and resizes the control image to it.
    """
    import cv2
    import numpy as np
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        StableDiffusionXLControlNetPipeline,
    )
    from diffusers.utils import load_image
    from PIL import Image as PILImage

    image = load_image(control_source)  # as the tutorial's load_image(path): EXIF rotation applied, converted to RGB
    controlnet = ControlNetModel.from_pretrained(controlnet_id, torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(VAE_FP16_FIX, torch_dtype=torch.float32)
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
        SDXL_BASE, controlnet=controlnet, vae=vae, torch_dtype=torch.float32
    )
    pipe.to(DEVICE)
    if preprocess:
        image = np.array(image)
        # On an RGB array cv2.Canny keeps, per pixel, the channel with the strongest gradient.
        image = cv2.Canny(image, low, high)
        image = image[:, :, None]
        image = np.concatenate([image, image, image], axis=2)
        image = PILImage.fromarray(image)
    images = pipe(
        prompt,
        negative_prompt=negative_prompt,
        image=image,
        controlnet_conditioning_scale=controlnet_conditioning_scale,
        num_inference_steps=steps,
        guidance_scale=guidance,
        num_images_per_prompt=num_images,
        generator=_generators(seed, num_images),
    ).images
    return images, image
