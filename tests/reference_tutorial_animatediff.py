"""AnimateDiff text-to-video with plain diffusers, as imagegen's reference: diffusers' docs example and the
AnimateDiff-Lightning model card.

Like reference_tutorial.py: line by line as the sources have them, changed only where tests need it: float32 on the
CPU instead of float16 on CUDA, a small size, and the seeded CPU generator the docs example already uses.  The
docs example's ``pipe.enable_vae_slicing()`` and ``pipe.enable_model_cpu_offload()`` are left out: they only
save GPU memory.  Neither runs here anyway: diffusers 0.42 dropped ``enable_vae_slicing`` from AnimateDiffPipeline
(``pipe.vae.enable_slicing()`` is its replacement, and changes the frames by under 1e-6), and CPU offload raises
``RuntimeError`` on a machine without an accelerator.  The repos are looked up through huggingface_hub
(``HF_HUB_CACHE``), so the tiny copies of tests/tiny_animatediff.py and tests/tiny_sd15.py stand in for the real
ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reference_tutorial import DEVICE
from tiny_animatediff import ANIMATEDIFF_LIGHTNING, MOTION_ADAPTER, lightning_file_name
from tiny_sd15 import SD15

if TYPE_CHECKING:
    from PIL.Image import Image


def animatediff(
    prompt: str,
    *,
    seed: int,
    num_frames: int = 16,
    steps: int = 25,
    guidance: float = 7.5,
    width: int = 64,
    height: int = 64,
    negative_prompt: str | None = None,
    base: str = SD15,
) -> list[Image]:
    """diffusers' AnimateDiff example (docs/source/en/api/pipelines/animatediff.md, "AnimateDiffPipeline")::

        adapter = MotionAdapter.from_pretrained("guoyww/animatediff-motion-adapter-v1-5-2", torch_dtype=torch.float16)
        model_id = "SG161222/Realistic_Vision_V5.1_noVAE"
        pipe = AnimateDiffPipeline.from_pretrained(model_id, motion_adapter=adapter, torch_dtype=torch.float16)
        scheduler = DDIMScheduler.from_pretrained(
            model_id, subfolder="scheduler", clip_sample=False, timestep_spacing="linspace",
            beta_schedule="linear", steps_offset=1,
        )
        pipe.scheduler = scheduler
        pipe.enable_vae_slicing()
        pipe.enable_model_cpu_offload()
        output = pipe(prompt=..., negative_prompt="bad quality, worse quality", num_frames=16, guidance_scale=7.5,
                      num_inference_steps=25, generator=torch.Generator("cpu").manual_seed(42))
        frames = output.frames[0]

    ``base`` is any SD 1.5 pipeline repo (the example's Realistic Vision; SD 1.5 itself by default).  Returns the
    ``num_frames`` frames of the one video as PIL images.
    """
    import torch
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    adapter = MotionAdapter.from_pretrained(MOTION_ADAPTER, torch_dtype=torch.float32)
    pipe = AnimateDiffPipeline.from_pretrained(base, motion_adapter=adapter, torch_dtype=torch.float32)
    scheduler = DDIMScheduler.from_pretrained(
        base,
        subfolder="scheduler",
        clip_sample=False,
        timestep_spacing="linspace",
        beta_schedule="linear",
        steps_offset=1,
    )
    pipe.scheduler = scheduler
    pipe.to(DEVICE)
    output = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt,
        num_frames=num_frames,
        guidance_scale=guidance,
        num_inference_steps=steps,
        width=width,
        height=height,
        generator=torch.Generator(DEVICE).manual_seed(seed),
    )
    return output.frames[0]


def animatediff_lightning(
    prompt: str,
    *,
    seed: int,
    steps: int = 4,
    num_frames: int = 16,
    width: int = 64,
    height: int = 64,
    base: str = SD15,
) -> list[Image]:
    """ByteDance/AnimateDiff-Lightning's model card ("Diffusers Usage")::

        step = 4  # Options: [1,2,4,8]
        repo = "ByteDance/AnimateDiff-Lightning"
        ckpt = f"animatediff_lightning_{step}step_diffusers.safetensors"
        base = "emilianJR/epiCRealism"  # Choose to your favorite base model.
        adapter = MotionAdapter().to(device, dtype)
        adapter.load_state_dict(load_file(hf_hub_download(repo ,ckpt), device=device))
        pipe = AnimateDiffPipeline.from_pretrained(base, motion_adapter=adapter, torch_dtype=dtype).to(device)
        pipe.scheduler = EulerDiscreteScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="trailing", beta_schedule="linear")
        output = pipe(prompt="A girl smiling", guidance_scale=1.0, num_inference_steps=step)

    One change: ``MotionAdapter()`` builds diffusers' default architecture, which is exactly the real
    animatediff-motion-adapter-v1-5-2's config (the checkpoints are distilled from AnimateDiff SD1.5 v2) but
    not the tiny one, so the adapter is built from that repo's config.json instead -- the same model on the
    real hub.  The card passes no generator; a seeded CPU one is added.  There is no 1-step special case (unlike
    SDXL-Lightning's ``prediction_type="sample"``), and guidance 1.0 means no classifier-free guidance.
    """
    import torch
    from diffusers import AnimateDiffPipeline, EulerDiscreteScheduler, MotionAdapter
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    ckpt = lightning_file_name(steps)  # ValueError for step counts without a checkpoint
    adapter = MotionAdapter.from_config(MotionAdapter.load_config(MOTION_ADAPTER)).to(DEVICE, torch.float32)
    adapter.load_state_dict(load_file(hf_hub_download(ANIMATEDIFF_LIGHTNING, ckpt), device=DEVICE))
    pipe = AnimateDiffPipeline.from_pretrained(base, motion_adapter=adapter, torch_dtype=torch.float32).to(DEVICE)
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing", beta_schedule="linear"
    )
    output = pipe(
        prompt=prompt,
        guidance_scale=1.0,
        num_inference_steps=steps,
        num_frames=num_frames,
        width=width,
        height=height,
        generator=torch.Generator(DEVICE).manual_seed(seed),
    )
    return output.frames[0]
