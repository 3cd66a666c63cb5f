"""Every validation rule gives a clear InvalidRequest naming the option."""

from __future__ import annotations

import math

import pytest

from imagegen.errors import InvalidRequest
from imagegen.recipes import get_recipe
from imagegen.request import MAX_IMAGES, MAX_SEED, GenerationRequest


def request(**options) -> GenerationRequest:
    return GenerationRequest(prompt="a cat", recipe="sdxl-turbo", **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"width": 100}, "width must be a multiple of 8, got 100"),
        ({"height": 60}, "height must be a multiple of 8, got 60"),
        ({"height": 56}, "height must be at least 64 for recipe sdxl-turbo, got 56"),
        ({"width": 8192}, "width must be between 8 and 4096"),
        ({"width": 512.0}, "width must be a whole number"),
        ({"num_inference_steps": 0}, r"num_inference_steps \(steps\) must be between 1 and 150, got 0"),
        ({"num_inference_steps": 151}, r"num_inference_steps \(steps\) must be between 1 and 150"),
        ({"num_images": 0}, r"num_images \(n\) must be between 1 and 16"),
        ({"num_images": MAX_IMAGES + 1}, r"num_images \(n\) must be between 1 and 16"),
        ({"guidance_scale": math.nan}, r"guidance_scale \(guidance\) must be a finite number"),
        ({"guidance_scale": math.inf}, r"guidance_scale \(guidance\) must be a finite number"),
        ({"guidance_scale": -1.0}, r"guidance_scale \(guidance\) must be between 0 and 50"),
        ({"guidance_scale": True}, r"guidance_scale \(guidance\) must be a finite number"),
        ({"seed": -1}, "seed must be between 0 and 4294967295"),
        ({"seed": MAX_SEED + 1}, "seed must be between 0 and 4294967295"),
        ({"scheduler": "warp-drive"}, "unknown scheduler 'warp-drive'; choose one of euler, euler-a"),
        ({"output_format": "bmp"}, "output format must be one of png, jpeg, webp"),
        ({"negative_prompt": "x" * 10_001}, "limited to 10000 characters"),
    ],
)
def test_bad_options_are_refused_with_a_message_naming_them(options, message) -> None:
    with pytest.raises(InvalidRequest, match=message):
        request(**options).resolve(get_recipe("sdxl-turbo"))


def test_a_prompt_that_is_too_long_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="limited to 10000 characters"):
        GenerationRequest(prompt="x" * 10_001, recipe="sdxl").validate()


def test_unknown_recipe_lists_the_known_ones() -> None:
    with pytest.raises(InvalidRequest, match="unknown recipe 'sdxl-ultra'; choose one of digits, dit, dit-512, sdxl, sdxl-turbo"):
        get_recipe("sdxl-ultra")


@pytest.mark.parametrize(
    ("recipe", "steps", "guidance", "size"),
    [("sdxl", 30, 5.0, 1024), ("sdxl-turbo", 1, 0.0, 512), ("lcm-sdxl", 4, 8.0, 1024), ("sdxl-lightning", 4, 0.0, 1024),
     ("dit", 25, 4.0, 256), ("dit-512", 25, 4.0, 512)],
)
def test_defaults_are_the_seeds_parameters(recipe, steps, guidance, size) -> None:
    resolved = GenerationRequest(prompt="a cat", recipe=recipe).resolve(get_recipe(recipe))
    assert (resolved.num_inference_steps, resolved.guidance_scale) == (steps, guidance)
    assert (resolved.width, resolved.height) == (size, size)
    assert 0 <= resolved.seed <= MAX_SEED


def test_explicit_options_override_the_defaults() -> None:
    resolved = request(seed=5, num_inference_steps=3, width=640, height=384, num_images=2).resolve(
        get_recipe("sdxl-turbo"))
    assert (resolved.seed, resolved.num_inference_steps, resolved.width, resolved.height) == (5, 3, 640, 384)
    assert resolved.image_seeds() == [5, 6]


def test_the_last_image_of_a_batch_keeps_a_valid_seed() -> None:
    with pytest.raises(InvalidRequest, match="seed \\+ n - 1 must stay within 4294967295"):
        request(seed=MAX_SEED, num_images=2).validate()
