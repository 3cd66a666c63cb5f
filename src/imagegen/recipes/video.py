"""Video diffusion, the reference tutorial's last chapter: a UNet with temporal layers denoises all frames together.

`animatediff` turns any SD 1.5 model into a text-to-video model by inserting AnimateDiff's motion modules;
`animatediff-lightning` swaps in ByteDance's distilled motion modules for 1-8 steps; `svd` (Stable Video
Diffusion) animates an input image.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from imagegen.models.sources import ModelRef, RepoKind
from imagegen.recipes.base import (
    BuildContext,
    Defaults,
    Recipe,
    text_to_image_arguments,
)
from imagegen.recipes.sd15 import SD15
from imagegen.request import GenerationRequest

MOTION_ADAPTER = ModelRef("guoyww/animatediff-motion-adapter-v1-5-2", kind=RepoKind.MODEL)
ANIMATEDIFF_LIGHTNING = ModelRef("ByteDance/AnimateDiff-Lightning", kind=RepoKind.FILES,
                                 file_pattern="animatediff_lightning_{steps}step_diffusers.safetensors")
SVD_XT = ModelRef("stabilityai/stable-video-diffusion-img2vid-xt", "AI-ModelScope/stable-video-diffusion-img2vid-xt")
ANIMATEDIFF_FPS = 8  # diffusers' export_to_gif default, at which AnimateDiff's 16 frames last 2 s
# The motion modules' positional embeddings cover 32 frames (motion_max_seq_length).
ANIMATEDIFF_MAX_FRAMES = 32


def _animatediff_pipeline(ctx: BuildContext, motion_adapter: Any) -> Any:
    from diffusers import AnimateDiffPipeline

    return ctx.pipeline(pipeline_class=AnimateDiffPipeline, motion_adapter=motion_adapter,
                        without=("safety_checker",))


def _animatediff(ctx: BuildContext) -> Any:
    from diffusers import DDIMScheduler

    pipe = _animatediff_pipeline(ctx, ctx.component("motion_adapter", "MotionAdapter"))
    # diffusers' AnimateDiff example: DDIM on the linear beta schedule the motion modules were trained with.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, timestep_spacing="linspace",
                                               beta_schedule="linear", steps_offset=1)
    return pipe


def _animatediff_lightning(ctx: BuildContext) -> Any:
    from diffusers import EulerDiscreteScheduler

    adapter = ctx.model_from_file("motion_adapter", config_role="motion_config", class_name="MotionAdapter",
                                  subfolder=None)
    pipe = _animatediff_pipeline(ctx, adapter)
    # The model card: Euler, trailing timesteps, linear betas.
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing",
                                                        beta_schedule="linear")
    return pipe


def _animatediff_arguments(pipe: Any, request: GenerationRequest) -> dict[str, Any]:
    return {**text_to_image_arguments(pipe, request), "num_frames": request.num_frames,
            "decode_chunk_size": request.decode_chunk_size}


def _svd_arguments(pipe: Any, request: GenerationRequest) -> dict[str, Any]:
    """SVD's guidance rises from 1 on the first frame to `guidance_scale` on the last (diffusers' max_guidance_scale)."""
    from imagegen.inputs import load_image

    image = load_image(request.init_image, what="input image").resize((request.width, request.height))
    return {"image": image, "width": request.width, "height": request.height, "num_frames": request.num_frames,
            "num_inference_steps": request.num_inference_steps, "min_guidance_scale": 1.0,
            "max_guidance_scale": request.guidance_scale, "fps": request.fps,
            "motion_bucket_id": request.motion_bucket_id, "noise_aug_strength": request.noise_aug_strength,
            "decode_chunk_size": request.decode_chunk_size}


ANIMATEDIFF = Recipe(
    name="animatediff",
    summary="AnimateDiff motion modules on SD 1.5 (or any SD 1.5 fine-tune): text-to-video, LoRAs",
    models={"base": SD15, "motion_adapter": MOTION_ADAPTER},
    # diffusers' AnimateDiff documentation: 16 frames, 25 DDIM steps, guidance 7.5.
    defaults=Defaults(num_inference_steps=25, guidance_scale=7.5, width=512, height=512, num_frames=16,
                      fps=ANIMATEDIFF_FPS, decode_chunk_size=16),
    build=_animatediff,
    arguments=_animatediff_arguments,
    takes_loras=True,
    video=True,
    max_frames=ANIMATEDIFF_MAX_FRAMES,
    one_seed_per_call=True,  # AnimateDiffPipeline ignores num_videos_per_prompt
    step_cache="deepcache",
)

ANIMATEDIFF_LIGHTNING_RECIPE = replace(
    ANIMATEDIFF,
    name="animatediff-lightning",
    summary="AnimateDiff-Lightning: distilled motion modules on SD 1.5, 1-8 steps",
    models={"base": SD15, "motion_adapter": ANIMATEDIFF_LIGHTNING, "motion_config": MOTION_ADAPTER},
    # The model card: guidance 1.0 (no CFG), the step count picks the checkpoint.
    defaults=replace(ANIMATEDIFF.defaults, num_inference_steps=4, guidance_scale=1.0),
    build=_animatediff_lightning,
    allowed_steps=(1, 2, 4, 8),
    cache_key=lambda request: request.num_inference_steps,
)

SVD = Recipe(
    name="svd",
    summary="Stable Video Diffusion XT: animates an input image (--init-image), 25 frames at 1024x576",
    models={"base": SVD_XT},
    # diffusers' SVD documentation: the input resized to 1024x576, decode_chunk_size 8, 7 fps; the pipeline's
    # own defaults for the rest (25 steps, guidance 1 -> 3 across the frames, motion bucket 127, noise 0.02).
    defaults=Defaults(num_inference_steps=25, guidance_scale=3.0, width=1024, height=576, num_frames=25, fps=7,
                      decode_chunk_size=8, motion_bucket_id=127, noise_aug_strength=0.02),
    build=lambda ctx: ctx.pipeline(),
    arguments=_svd_arguments,
    image_conditioned=True,
    takes_prompt=False,
    scheduler_choice=False,  # SVD's Karras-sigma EDM schedule would leak into every other sampler's config
    min_side=32,
    video=True,
    one_seed_per_call=True,
)

RECIPES = (ANIMATEDIFF, ANIMATEDIFF_LIGHTNING_RECIPE, SVD)
