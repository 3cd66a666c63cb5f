"""--fast tiny-vae: the recipe's pipeline decoding with TAESD / TAESDXL, exactly as diffusers documents it
(`pipe.vae = AutoencoderTiny.from_pretrained("madebyollin/taesdxl")`), recorded in the infotext and replayed."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from tiny_models import SDXL_TURBO
from tiny_sd15 import SD15
from tiny_taesd import TAESD, TAESDXL

from imagegen.errors import InvalidRequest, ModelNotFound, Notice
from imagegen.models.sources import LocalModel
from imagegen.parameters import request_from_infotext
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("sdxl_models", "sd15_models", "taesd_models")
CASES = {"sdxl-turbo": (SDXL_TURBO, TAESDXL, 1, 0.0), "sd15": (SD15, TAESD, 3, 7.5)}


def reference(recipe: str, prompt: str, seed: int) -> np.ndarray:
    """The plain diffusers way: the model's pipeline with its VAE replaced by the tiny one."""
    import torch
    from diffusers import AutoencoderTiny, AutoPipelineForText2Image

    repo, tiny, steps, guidance = CASES[recipe]
    pipe = AutoPipelineForText2Image.from_pretrained(repo, torch_dtype=torch.float32)
    if recipe == "sd15":
        pipe.safety_checker = None  # as the recipe (and A1111, ComfyUI) leave it out
    pipe.vae = AutoencoderTiny.from_pretrained(tiny, torch_dtype=torch.float32)
    image = pipe(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance, width=64, height=64,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    return np.asarray(image)


@pytest.mark.parametrize("recipe", list(CASES))
def test_tiny_vae_matches_diffusers_with_the_tiny_vae_swapped_in(engine, recipe) -> None:
    _, _, steps, _ = CASES[recipe]
    request = GenerationRequest(prompt="a lighthouse", recipe=recipe, seed=11, width=64, height=64,
                                num_inference_steps=steps)
    [fast] = engine.generate(replace(request, fast="tiny-vae"))
    [default] = engine.generate(request)
    np.testing.assert_array_equal(np.asarray(fast.image), reference(recipe, "a lighthouse", 11))
    assert not np.array_equal(np.asarray(fast.image), np.asarray(default.image))  # the full VAE is still default
    assert "Fast: tiny-vae" in fast.infotext and "Fast:" not in default.infotext


def test_the_infotext_replays_the_tiny_vae(engine) -> None:
    [fast] = engine.generate(GenerationRequest(prompt="a fox", recipe="sdxl-turbo", seed=5, width=64, height=64,
                                               fast="all"))
    replayed = request_from_infotext(fast.infotext)
    assert replayed.fast == fast.request.fast and "tiny-vae" in replayed.fast  # and bf16 on a CPU that has it
    np.testing.assert_array_equal(np.asarray(engine.generate(replayed)[0].image), np.asarray(fast.image))


def test_a_method_that_does_not_apply_is_a_notice_not_an_error(engine) -> None:
    with pytest.warns(Notice, match="--fast tiny-vae: does not apply to recipe digits; ignored"):
        [image] = engine.generate(GenerationRequest(prompt="7", recipe="digits", seed=1, fast="tiny-vae"))
    assert "Fast:" not in image.infotext
    with pytest.raises(InvalidRequest, match="unknown fast method .turbo.; choose from tiny-vae, bf16, step-cache, "
                                             "compile, int8, fp8, or all"):
        GenerationRequest(prompt="7", fast="tiny-vae,turbo").validate()
    with pytest.raises(InvalidRequest, match="unknown fast method ''"):
        GenerationRequest(prompt="7", fast=" , ").validate()


def test_a_tiny_vae_for_other_latents_is_refused(tmp_path) -> None:
    import torch
    from diffusers import AutoencoderTiny, AutoPipelineForText2Image

    from imagegen.fast.tiny_vae import use_tiny_vae
    from imagegen.models.components import ComponentStore, Precision
    from imagegen.recipes import get_recipe

    AutoencoderTiny().save_pretrained(tmp_path)  # the real TAESD shape: 8x, which the tiny pipeline's 2x is not
    pipe = AutoPipelineForText2Image.from_pretrained(SDXL_TURBO, torch_dtype=torch.float32)
    recipe = replace(get_recipe("sdxl-turbo"), tiny_vae=LocalModel(tmp_path))
    with pytest.raises(ModelNotFound, match="does not fit recipe sdxl-turbo: it decodes 8x from 4 channels, the "
                                            "pipeline's latents are 2x with 4"):
        use_tiny_vae(pipe, recipe, ComponentStore(), Precision("cpu", "float32"))


def test_the_default_path_never_imports_the_fast_package() -> None:
    """The subprocess reads the session's tiny cache: the fixtures set HF_HUB_CACHE."""
    script = ("import sys, imagegen; imagegen.generate('a fox', recipe='sdxl-turbo', seed=1, width=64, height=64); "
              "print('imagegen.fast' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "False"
