"""The tiny AnimateDiff fixtures resolve like the real repos, fit the tiny SD 1.5, and the reference recipes run on
them with motion modules that really couple the frames."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from reference_tutorial_animatediff import animatediff, animatediff_lightning
from tiny_animatediff import (
    ANIMATEDIFF_LIGHTNING,
    LIGHTNING_STEPS,
    MOTION_ADAPTER,
    MOTION_ADAPTER_CONFIG,
    build_animatediff,
    lightning_file_name,
)
from tiny_models import snapshot_path
from tiny_sd15 import SD15

if TYPE_CHECKING:
    from diffusers import AnimateDiffPipeline
    from PIL.Image import Image

PROMPT = "a photo of the cat and dog"
# What each real repo has, less READMEs, licences, ComfyUI-format checkpoints, workflows, report and samples.
REPO_FILES = {
    MOTION_ADAPTER: {"config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"},
    ANIMATEDIFF_LIGHTNING: {lightning_file_name(steps) for steps in LIGHTNING_STEPS},
}
# The keys of the real animatediff-motion-adapter-v1-5-2/config.json (written by diffusers 0.22.0.dev0).
REAL_CONFIG_KEYS = {
    "_class_name",
    "_diffusers_version",
    "block_out_channels",
    "motion_activation_fn",
    "motion_attention_bias",
    "motion_cross_attention_dim",
    "motion_layers_per_block",
    "motion_max_seq_length",
    "motion_mid_block_layers_per_block",
    "motion_norm_num_groups",
    "motion_num_attention_heads",
    "use_motion_mid_block",
}


@pytest.fixture(scope="module")
def pipe(animatediff_models: Path) -> AnimateDiffPipeline:
    """The docs example's pipeline, as reference_tutorial_animatediff.animatediff builds it, for direct calls."""
    import torch
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    adapter = MotionAdapter.from_pretrained(MOTION_ADAPTER, torch_dtype=torch.float32)
    pipe = AnimateDiffPipeline.from_pretrained(SD15, motion_adapter=adapter, torch_dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_pretrained(
        SD15, subfolder="scheduler", clip_sample=False, timestep_spacing="linspace", beta_schedule="linear",
        steps_offset=1,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pixels(frames: list[Image]) -> np.ndarray:
    return np.stack([np.asarray(frame).astype(np.float64) for frame in frames])


def _assert_frames_differ(video: np.ndarray) -> None:
    for index in range(1, len(video)):
        assert np.abs(video[index] - video[0]).mean() > 1.0


def test_repos_resolve_offline_with_the_real_files(animatediff_models: Path) -> None:
    from huggingface_hub import snapshot_download

    for repo_id, files in REPO_FILES.items():
        snapshot = Path(snapshot_download(repo_id))
        assert snapshot == snapshot_path(animatediff_models, repo_id)
        assert {path.name for path in snapshot.iterdir()} == files


def test_motion_adapter_fits_the_tiny_sd15_unet_and_keeps_the_real_config(animatediff_models: Path) -> None:
    import torch
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from safetensors import safe_open

    snapshot = snapshot_path(animatediff_models, MOTION_ADAPTER)
    written = json.loads((snapshot / "config.json").read_text())
    assert set(written) == REAL_CONFIG_KEYS
    assert written == MOTION_ADAPTER_CONFIG
    # As in the real repo, the "fp16" variant holds float32 tensors like the main file.
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        with safe_open(snapshot / name, "pt") as weights:
            assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {"F32"}

    unet = UNet2DConditionModel.from_pretrained(SD15, subfolder="unet")
    adapter = MotionAdapter.from_pretrained(MOTION_ADAPTER)
    assert list(adapter.config.block_out_channels) == list(unet.config.block_out_channels)
    assert adapter.config.motion_layers_per_block == unet.config.layers_per_block
    motion_unet = UNetMotionModel.from_unet2d(unet, adapter)
    assert motion_unet.mid_block.motion_modules is not None  # v1-5-2 has a mid-block motion module
    half = MotionAdapter.from_pretrained(MOTION_ADAPTER, variant="fp16", torch_dtype=torch.float16)
    assert half.dtype == torch.float16


def test_lightning_files_load_strictly_with_their_own_fp16_weights(animatediff_models: Path) -> None:
    """The model card's ``adapter.load_state_dict(load_file(...))`` is strict: every key fits, none is missing."""
    import torch
    from diffusers import MotionAdapter
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    base = MotionAdapter.from_pretrained(MOTION_ADAPTER).state_dict()
    probe = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.weight"
    seen = [base[probe]]
    for steps in LIGHTNING_STEPS:
        state_dict = load_file(hf_hub_download(ANIMATEDIFF_LIGHTNING, lightning_file_name(steps)))
        assert {tensor.dtype for tensor in state_dict.values()} == {torch.float16}
        adapter = MotionAdapter.from_config(MotionAdapter.load_config(MOTION_ADAPTER))
        result = adapter.load_state_dict(state_dict)
        assert not result.missing_keys and not result.unexpected_keys
        assert all(not torch.equal(adapter.state_dict()[probe], other.float()) for other in seen)
        seen.append(adapter.state_dict()[probe])


def test_lightning_rejects_step_counts_without_a_checkpoint(animatediff_models: Path) -> None:
    with pytest.raises(ValueError, match="1, 2, 4, 8"):
        animatediff_lightning(PROMPT, seed=0, steps=3)


def test_builds_are_identical(animatediff_models: Path, tmp_path: Path) -> None:
    """The commit hash covers every file's content, so equal hashes mean byte-identical repos."""
    build_animatediff(tmp_path)
    for repo_id in REPO_FILES:
        assert snapshot_path(tmp_path, repo_id).name == snapshot_path(animatediff_models, repo_id).name


def test_reference_is_seeded_sized_and_animated(animatediff_models: Path) -> None:
    frames = animatediff(PROMPT, seed=7, num_frames=4, steps=2, width=64, height=48)
    assert [frame.size for frame in frames] == [(64, 48)] * 4
    video = _pixels(frames)
    assert np.array_equal(video, _pixels(animatediff(PROMPT, seed=7, num_frames=4, steps=2, width=64, height=48)))
    _assert_frames_differ(video)


def test_lightning_reference_is_seeded_sized_and_animated(animatediff_models: Path) -> None:
    frames = animatediff_lightning(PROMPT, seed=7, steps=2, num_frames=4)
    assert [frame.size for frame in frames] == [(64, 64)] * 4
    video = _pixels(frames)
    _assert_frames_differ(video)
    assert not np.array_equal(video, _pixels(animatediff_lightning(PROMPT, seed=7, steps=1, num_frames=4)))


def test_motion_modules_couple_the_frames(pipe: AnimateDiffPipeline) -> None:
    """New noise for frame 0 alone changes the other frames, which only the temporal layers can do: with their
    output projections zeroed the other frames come out bit-identical."""
    import torch

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((1, 4, 4, 32, 32), generator=generator)
    changed = latents.clone()
    changed[:, :, 0] = torch.randn((1, 4, 32, 32), generator=generator)

    def frames(start: torch.Tensor) -> np.ndarray:
        output = pipe(PROMPT, num_frames=4, num_inference_steps=2, latents=start.clone(), output_type="np")
        return output.frames[0] * 255

    moved = np.abs(frames(latents) - frames(changed)).mean(axis=(1, 2, 3))
    assert moved[0] > 10 and (moved[1:] > 2).all()

    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    projections = [module.proj_out.weight for module in pipe.unet.modules()
                   if isinstance(module, AnimateDiffTransformer3D)]
    assert len(projections) == 2 * 2 + 1 + 3 * 2  # motion modules: down 2x2, mid 1, up 2x3
    saved = [weight.detach().clone() for weight in projections]
    try:
        with torch.no_grad():
            for weight in projections:
                weight.zero_()
        still = np.abs(frames(latents) - frames(changed)).mean(axis=(1, 2, 3))
    finally:
        with torch.no_grad():
            for weight, value in zip(projections, saved):
                weight.copy_(value)
    assert still[0] > 10 and (still[1:] == 0).all()


def test_batched_videos_need_a_prompt_list_and_one_generator_each(pipe: AnimateDiffPipeline) -> None:
    """AnimateDiffPipeline overrides ``num_videos_per_prompt`` with 1; a list of prompts with a list of generators
    gives one video per generator, video i as generator i alone would (up to float rounding)."""
    import torch

    def generator(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    call = {"num_frames": 2, "num_inference_steps": 1, "output_type": "np"}
    single = pipe(PROMPT, generator=generator(8), **call).frames
    assert pipe(PROMPT, generator=generator(8), num_videos_per_prompt=2, **call).frames.shape[0] == 1
    batch = pipe([PROMPT, PROMPT], generator=[generator(7), generator(8)], **call).frames
    assert batch.shape == (2, 2, 64, 64, 3)
    assert np.abs(batch[1] - single[0]).max() < 1e-4
    assert np.abs(batch[0] - batch[1]).mean() > 1e-3
