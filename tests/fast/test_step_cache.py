"""--fast step-cache: DeepCache on the UNet recipes, exactly as the DeepCache package's own example drives a diffusers
pipeline, and diffusers' first-block cache on DiT; state lives for one call, so jobs never see each other's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from tiny_models import SDXL_BASE
from tiny_sd15 import SD15

from imagegen.errors import Notice
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("sdxl_models", "sd15_models", "taesd_models")
STEPS = 12
CASES = {"sdxl": (SDXL_BASE, 5.0), "sd15": (SD15, 7.5)}


def deepcache_reference(recipe: str, prompt: str, seed: int) -> np.ndarray:
    """DeepCache's README: the helper wrapped around a plain diffusers pipeline, interval 3, branch 0."""
    import torch
    from DeepCache import DeepCacheSDHelper
    from diffusers import AutoPipelineForText2Image

    repo, guidance = CASES[recipe]
    pipe = AutoPipelineForText2Image.from_pretrained(repo, torch_dtype=torch.float32)
    if recipe == "sd15":
        pipe.safety_checker = None  # as the recipe (and A1111, ComfyUI) leave it out
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=3, cache_branch_id=0)
    helper.enable()
    image = pipe(prompt=prompt, num_inference_steps=STEPS, guidance_scale=guidance, width=64, height=64,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    return np.asarray(image)


@pytest.mark.parametrize("recipe", list(CASES))
def test_deepcache_matches_the_packages_own_use_and_leaves_the_default_alone(engine, recipe) -> None:
    request = GenerationRequest(prompt="a lighthouse", recipe=recipe, seed=3, width=64, height=64,
                                num_inference_steps=STEPS)
    [default] = engine.generate(request)
    [cached] = engine.generate(replace(request, fast="step-cache"))
    [again] = engine.generate(replace(request, fast="step-cache"))  # no state carried over from the last job
    [default_after] = engine.generate(request)
    np.testing.assert_array_equal(np.asarray(cached.image), deepcache_reference(recipe, "a lighthouse", 3))
    np.testing.assert_array_equal(np.asarray(again.image), np.asarray(cached.image))
    np.testing.assert_array_equal(np.asarray(default_after.image), np.asarray(default.image))
    assert not np.array_equal(np.asarray(cached.image), np.asarray(default.image))
    assert "Fast: step-cache" in cached.infotext and "Fast:" not in default.infotext


def test_deepcache_runs_the_whole_unet_on_every_third_step_only(engine) -> None:
    """Counted inside the UNet's middle block, which only full steps enter (DDIM: one UNet call per step)."""
    request = GenerationRequest(prompt="a fox", recipe="sd15", seed=1, width=64, height=64,
                                num_inference_steps=STEPS, scheduler="ddim", fast="step-cache")
    engine.generate(request)
    unet = next(reversed(engine._pipelines.values()))[0].unet
    calls = []
    handle = unet.mid_block.resnets[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        engine.generate(request)
    finally:
        handle.remove()
    assert len(calls) == STEPS // 3


def test_too_few_steps_leave_step_caching_out_with_a_notice(engine) -> None:
    with pytest.warns(Notice, match="--fast step-cache: 4 steps are too few to reuse features between them"):
        [image] = engine.generate(GenerationRequest(prompt="a fox", recipe="sd15", seed=1, width=64, height=64,
                                                    num_inference_steps=4, fast="step-cache"))
    assert "Fast:" not in image.infotext
    # "all" leaves it out silently where the others apply (sdxl-turbo's one step)
    [turbo] = engine.generate(GenerationRequest(prompt="a fox", recipe="sdxl-turbo", seed=1, width=64, height=64,
                                                fast="all"))
    assert "step-cache" not in turbo.infotext and "tiny-vae" in turbo.infotext


@pytest.mark.usefixtures("hf_cache")
def test_first_block_cache_skips_dit_blocks_and_is_removed_after_the_call(engine, monkeypatch) -> None:
    from imagegen.fast import step_cache

    # Random weights change the first block's output by more than any real threshold between steps: raised, so
    # that the test sees steps skipped (the mechanism; the threshold is tuning).
    monkeypatch.setattr(step_cache, "FIRST_BLOCK_THRESHOLD", 100.0)
    request = GenerationRequest(prompt="golden retriever", recipe="dit", seed=2, width=64, height=64,
                                num_inference_steps=STEPS)
    [default] = engine.generate(request)
    transformer = next(reversed(engine._pipelines.values()))[0].transformer
    calls = []
    handle = transformer.transformer_blocks[-1].attn1.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        [cached] = engine.generate(replace(request, fast="step-cache"))
    finally:
        handle.remove()
    [default_after] = engine.generate(request)
    assert 0 < len(calls) < STEPS  # the last block ran on some steps only
    np.testing.assert_array_equal(np.asarray(default_after.image), np.asarray(default.image))
    assert "Fast: step-cache" in cached.infotext
