"""The reference tutorial's diffusers snippets, one function per recipe, as the reference imagegen must match.

Each function follows its snippet line by line with plain diffusers (no imagegen import), changed only where
tests need it: Hugging Face repo ids instead of ModelScope ones, float32 on the CPU with no fp16 variant, a
seeded CPU generator and a small height/width.  The repos are looked up through huggingface_hub, so the caller
decides where they come from with ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` (see tests/recipes/test_sdxl_fixtures.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiny_models import (
    DIT_256,
    LCM_SDXL,
    LIGHTNING_STEPS,
    SDXL_BASE,
    SDXL_LIGHTNING,
    SDXL_TURBO,
)

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

DEVICE = "cpu"


def sdxl(
    prompt: str,
    *,
    seed: int,
    steps: int = 30,
    guidance: float = 5.0,
    width: int = 64,
    height: int = 64,
    negative_prompt: str | None = None,
    num_images: int = 1,
) -> list[Image]:
    """SDXL base 1.0 with its own Euler scheduler and classifier-free guidance."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(SDXL_BASE, torch_dtype=torch.float32)
    pipe.to(DEVICE)
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


def sdxl_turbo(
    prompt: str,
    *,
    seed: int,
    steps: int = 1,
    guidance: float = 0.0,
    width: int = 64,
    height: int = 64,
    num_images: int = 1,
) -> list[Image]:
    """SDXL-Turbo: its model card runs 1 step with guidance 0, as the model was distilled without CFG."""
    import torch
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(SDXL_TURBO, torch_dtype=torch.float32)
    pipe.to(DEVICE)
    return pipe(
        prompt=prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=width,
        height=height,
        num_images_per_prompt=num_images,
        generator=_generators(seed, num_images),
    ).images


def lcm_sdxl(
    prompt: str,
    *,
    seed: int,
    steps: int = 4,
    guidance: float = 8.0,
    width: int = 64,
    height: int = 64,
    num_images: int = 1,
) -> list[Image]:
    """LCM-SDXL: the distilled UNet swapped into SDXL base, sampled with LCMScheduler (model card: 4 steps, 8.0)."""
    import torch
    from diffusers import DiffusionPipeline, LCMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(LCM_SDXL, torch_dtype=torch.float32)
    pipe = DiffusionPipeline.from_pretrained(SDXL_BASE, unet=unet, torch_dtype=torch.float32)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.to(DEVICE)
    return pipe(
        prompt=prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=width,
        height=height,
        num_images_per_prompt=num_images,
        generator=_generators(seed, num_images),
    ).images


def sdxl_lightning(
    prompt: str,
    *,
    seed: int,
    steps: int = 4,
    width: int = 64,
    height: int = 64,
    num_images: int = 1,
) -> list[Image]:
    """SDXL-Lightning: one UNet checkpoint per step count loaded into SDXL base, Euler with trailing timesteps.

    The model card asks for guidance 0 (the checkpoints are distilled without CFG) and, for the experimental
    1-step checkpoint, ``prediction_type="sample"`` because that UNet predicts the clean latent directly.
    """
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    if steps not in LIGHTNING_STEPS:
        raise ValueError(f"SDXL-Lightning has checkpoints for {LIGHTNING_STEPS} steps, not {steps}")
    checkpoint = f"sdxl_lightning_{steps}step_unet.safetensors"
    unet = UNet2DConditionModel.from_config(SDXL_BASE, subfolder="unet").to(DEVICE, torch.float32)
    unet.load_state_dict(load_file(hf_hub_download(SDXL_LIGHTNING, checkpoint), device=DEVICE))
    pipe = StableDiffusionXLPipeline.from_pretrained(SDXL_BASE, unet=unet, torch_dtype=torch.float32).to(DEVICE)
    if steps == 1:
        pipe.scheduler = EulerDiscreteScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="trailing", prediction_type="sample"
        )
    else:
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    return pipe(
        prompt=prompt,
        num_inference_steps=steps,
        guidance_scale=0,
        width=width,
        height=height,
        num_images_per_prompt=num_images,
        generator=_generators(seed, num_images),
    ).images


def sdxl_turbo_img2img(prompt: str, init_image: Image, *, seed: int, steps: int = 2, strength: float = 0.5,
                       num_images: int = 1) -> list[Image]:
    """SDXL-Turbo's model-card img2img: AutoPipelineForImage2Image, guidance 0, steps x strength >= 1."""
    import torch
    from diffusers import AutoPipelineForImage2Image

    pipe = AutoPipelineForImage2Image.from_pretrained(SDXL_TURBO, torch_dtype=torch.float32).to(DEVICE)
    return pipe(prompt, image=init_image, num_inference_steps=steps, strength=strength, guidance_scale=0.0,
                num_images_per_prompt=num_images, generator=_generators(seed, num_images)).images


def sdxl_inpaint(prompt: str, init_image: Image, mask: Image, *, seed: int, steps: int = 3, strength: float = 0.75,
                 guidance: float = 5.0, width: int = 64, height: int = 64) -> list[Image]:
    """diffusers' SDXL inpainting on the SDXL base weights."""
    import torch
    from diffusers import AutoPipelineForInpainting

    pipe = AutoPipelineForInpainting.from_pretrained(SDXL_BASE, torch_dtype=torch.float32).to(DEVICE)
    return pipe(prompt, image=init_image, mask_image=mask, num_inference_steps=steps, strength=strength,
                guidance_scale=guidance, width=width, height=height, generator=_generators(seed, 1)).images


def dit(class_name: str, *, seed: int, steps: int = 25, guidance: float = 4.0, num_images: int = 1) -> list[Image]:
    """diffusers' DiT example (the reference tutorial describes DiT's inference chain; this is its diffusers form)."""
    import torch
    from diffusers import DiTPipeline, DPMSolverMultistepScheduler

    pipe = DiTPipeline.from_pretrained(DIT_256, torch_dtype=torch.float32)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(DEVICE)
    class_ids = pipe.get_label_ids([class_name])
    return pipe(
        class_labels=class_ids * num_images,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=_generators(seed, num_images),
    ).images


def _generators(seed: int, num_images: int) -> torch.Generator | list[torch.Generator]:
    """One CPU generator, or one per image seeded ``seed + i``: image i starts from the noise of a single image
    generated with seed ``seed + i``."""
    import torch

    if num_images == 1:
        return torch.Generator(DEVICE).manual_seed(seed)
    return [torch.Generator(DEVICE).manual_seed(seed + index) for index in range(num_images)]
