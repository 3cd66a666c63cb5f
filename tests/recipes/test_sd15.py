"""sd15: the default SD 1.5 repo, the reference tutorial's majicmix (ModelScope, v7 sub-folder) with its Dunhuang
LoRA, img2img."""

from __future__ import annotations

import numpy as np
import pytest
import reference_tutorial_sd15
from PIL import Image
from tiny_sd15 import (
    DUNHUANG,
    DUNHUANG_WEIGHT_NAME,
    MAJICMIX,
    MAJICMIX_SUBFOLDER,
    write_dunhuang_modelscope,
    write_majicmix_modelscope,
)

from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("sd15_models")

PROMPT = "1 girl, close-up, black long hair, dunhuang, Chinese ancient style"
SIZE = {"width": 64, "height": 64}


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def sd15(**options) -> GenerationRequest:
    return GenerationRequest(**{"prompt": PROMPT, "recipe": "sd15", **SIZE, **options})


def test_default_model_matches_diffusers_without_the_safety_checker(engine) -> None:
    ours = engine.generate(sd15(seed=3, num_inference_steps=3))
    theirs = reference_tutorial_sd15.sd15(PROMPT, seed=3, steps=3)
    np.testing.assert_array_equal(pixels(ours[0].image), pixels(theirs[0]))
    loaded = [pipe for pipe, _ in engine._pipelines.values() if type(pipe).__name__ == "StableDiffusionPipeline"]
    assert loaded and loaded[0].safety_checker is None  # the 1.2 GB checker is never loaded


def test_the_reference_tutorials_majicmix_and_dunhuang_lora_from_modelscope(engine, tmp_path, monkeypatch) -> None:
    """The reference tutorial: snapshot_download("YorickHe/majicmixRealistic_v6") + "/v7", and the LoRA repo's one
    file."""
    cache = tmp_path / "modelscope"
    model_dir, lora_dir = write_majicmix_modelscope(cache), write_dunhuang_modelscope(cache)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(cache))
    ours = engine.generate(sd15(seed=4, num_inference_steps=3, model=f"{MAJICMIX}/{MAJICMIX_SUBFOLDER}",
                                prompt=f"{PROMPT} <lora:{DUNHUANG}>"))
    theirs = reference_tutorial_sd15.sd15_lora(model_dir, lora_dir, DUNHUANG_WEIGHT_NAME, PROMPT, seed=4, steps=3)
    np.testing.assert_array_equal(pixels(ours[0].image), pixels(theirs[0]))
    without = reference_tutorial_sd15.sd15_lora(model_dir, None, None, PROMPT, seed=4, steps=3)
    assert np.abs(pixels(without[0]).astype(int) - pixels(theirs[0]).astype(int)).mean() > 5  # the LoRA acted
    assert f"Model: {MAJICMIX}/{MAJICMIX_SUBFOLDER}" in ours[0].infotext


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_img2img_matches_diffusers(engine, tmp_path, strength) -> None:
    start = Image.effect_mandelbrot((64, 64), (-2, -1.5, 1, 1.5), 40).convert("RGB")
    start.save(tmp_path / "start.png")
    ours = engine.generate(sd15(seed=6, num_inference_steps=4, strength=strength, init_image=str(tmp_path / "start.png")))
    theirs = reference_tutorial_sd15.sd15_img2img(PROMPT, start, seed=6, steps=4, strength=strength)
    np.testing.assert_array_equal(pixels(ours[0].image), pixels(theirs[0]))
    assert f"Denoising strength: {strength}" in ours[0].infotext


def test_a_civitai_single_file_checkpoint_draws_what_its_folder_draws(engine, sd15_models, tmp_path) -> None:
    from single_file_checkpoint import write_sd15_single_file
    from tiny_models import snapshot_path
    from tiny_sd15 import SD15

    checkpoint = write_sd15_single_file(snapshot_path(sd15_models, SD15), tmp_path / "tiny_sd15.safetensors")
    from_file = engine.generate(sd15(seed=2, num_inference_steps=2, model=str(checkpoint)))
    from_folder = engine.generate(sd15(seed=2, num_inference_steps=2))
    np.testing.assert_array_equal(pixels(from_file[0].image), pixels(from_folder[0].image))


def test_inpainting_matches_diffusers(engine, tmp_path) -> None:
    import torch
    from diffusers import AutoPipelineForInpainting
    from tiny_sd15 import SD15

    start = Image.effect_mandelbrot((64, 64), (-2, -1.5, 1, 1.5), 40).convert("RGB")
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 48, 48))
    start.save(tmp_path / "start.png")
    mask.save(tmp_path / "mask.png")
    ours = engine.generate(sd15(seed=6, num_inference_steps=4, init_image=str(tmp_path / "start.png"),
                                mask_image=str(tmp_path / "mask.png")))
    pipe = AutoPipelineForInpainting.from_pretrained(SD15, safety_checker=None, torch_dtype=torch.float32)
    theirs = pipe(PROMPT, image=start, mask_image=mask, num_inference_steps=4, strength=0.75, guidance_scale=7.5,
                  width=64, height=64, generator=torch.Generator("cpu").manual_seed(6)).images
    np.testing.assert_array_equal(pixels(ours[0].image), pixels(theirs[0]))
