"""diffusers' Stable Video Diffusion example with plain diffusers, as the image-to-video reference imagegen must match.

Kept apart from reference_tutorial.py because it needs the fixture of tiny_svd.py; it follows the same rules.  The
example (diffusers' "Stable Video Diffusion" guide, using-diffusers/svd.md) is::

    pipe = StableVideoDiffusionPipeline.from_pretrained(
        "stabilityai/stable-video-diffusion-img2vid-xt", torch_dtype=torch.float16, variant="fp16"
    )
    pipe.enable_model_cpu_offload()
    image = load_image("https://.../rocket.png")
    image = image.resize((1024, 576))
    generator = torch.manual_seed(42)
    frames = pipe(image, decode_chunk_size=8, generator=generator).frames[0]
    export_to_video(frames, "generated.mp4", fps=7)

changed only where tests need it: the repo looked up through huggingface_hub (the caller sets ``HF_HUB_CACHE`` and
``HF_HUB_OFFLINE``), float32 on the CPU without the fp16 variant and without CPU offload, a seeded CPU generator
(``torch.manual_seed`` seeds the same CPU stream), an image passed in instead of downloaded, and a small
size and frame count.  The guide's micro-conditioning section passes ``motion_bucket_id`` and
``noise_aug_strength`` the same way; the other arguments are the pipeline's own, with its defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reference_tutorial import DEVICE
from tiny_svd import SVD_TEST_FRAMES, SVD_TEST_HEIGHT, SVD_TEST_WIDTH, SVD_XT

if TYPE_CHECKING:
    from PIL.Image import Image


def svd(
    image: Image,
    *,
    seed: int,
    num_frames: int = SVD_TEST_FRAMES,
    steps: int = 25,
    width: int = SVD_TEST_WIDTH,
    height: int = SVD_TEST_HEIGHT,
    decode_chunk_size: int = 8,
    motion_bucket_id: int = 127,
    fps: int = 7,
    noise_aug_strength: float = 0.02,
    min_guidance: float = 1.0,
    max_guidance: float = 3.0,
) -> list[Image]:
    """SVD-XT animates ``image`` into ``num_frames`` frames of ``width`` x ``height``; returns one video's frames.

    The pipeline resizes the image to width x height itself (and to 224x224 for the CLIP image encoder); the
    example resizes it first, which the reference keeps.  ``height``/``width`` must be passed: the pipeline's
    defaults are 576x1024 whatever the UNet config says.  ``fps`` is the frame rate the video is meant to play
    at (the pipeline conditions the UNet on ``fps - 1``, as SVD was trained); the guidance scale rises linearly
    from ``min_guidance`` on the first frame to ``max_guidance`` on the last.  One CPU generator seeded ``seed``
    draws the noise added to the conditioning image first, then the initial latents.
    """
    import torch
    from diffusers import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(SVD_XT, torch_dtype=torch.float32)
    pipe.to(DEVICE)
    image = image.resize((width, height))
    generator = torch.Generator(DEVICE).manual_seed(seed)
    return pipe(
        image,
        height=height,
        width=width,
        num_frames=num_frames,
        num_inference_steps=steps,
        min_guidance_scale=min_guidance,
        max_guidance_scale=max_guidance,
        fps=fps,
        motion_bucket_id=motion_bucket_id,
        noise_aug_strength=noise_aug_strength,
        decode_chunk_size=decode_chunk_size,
        generator=generator,
    ).frames[0]
