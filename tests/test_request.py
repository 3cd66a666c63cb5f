"""Every validation rule gives a clear InvalidRequest naming the option."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from imagegen.errors import InvalidRequest
from imagegen.options import MAX_IMAGES, MAX_SEED
from imagegen.prompts.lora_tags import LoraSpec
from imagegen.recipes import get_recipe
from imagegen.request import GenerationRequest


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
        ({"output_format": "bmp"}, r"unknown output_format \(format\) .bmp.; choose one of png, jpeg, webp, mp4, gif, frames"),
        ({"num_frames": 0}, r"num_frames \(frames\) must be between 1 and 64"),
        ({"num_frames": 64, "width": 2048, "height": 2048}, "more than the 37,748,736 pixels a video may have"),
        ({"noise_aug_strength": 2.0}, r"noise_aug_strength \(noise-aug\) must be between 0 and 1"),
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
def test_defaults_are_the_reference_tutorials_parameters(recipe, steps, guidance, size) -> None:
    resolved = GenerationRequest(prompt="1", recipe=recipe).resolve(get_recipe(recipe))  # a class id for DiT
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


@pytest.mark.parametrize(
    ("recipe", "options", "message"),
    [
        ("dit", {"loras": (LoraSpec("style"),)}, "recipe dit does not take LoRAs"),
        ("sdxl", {"control_image": "edges.png"}, "recipe sdxl does not take a control image"),
        ("sdxl", {"controlnet": "org/depth"}, "recipe sdxl does not take --controlnet"),
        ("sdxl", {"canny_low": 50}, "recipe sdxl does not take canny_low"),
        ("sdxl", {"decoder_steps": 5}, "recipe sdxl does not take decoder_steps"),
        ("sdxl", {"num_frames": 16}, "recipe sdxl does not take num_frames"),
        ("sdxl", {"output_format": "mp4"}, "recipe sdxl writes images: choose one of png, jpeg, webp, not mp4"),
        ("dit", {"strength": 0.5, "init_image": "x.png"}, "recipe dit does not take an init image"),
        ("stable-cascade", {"scheduler": "euler"}, "recipe stable-cascade does not take --scheduler"),
        ("stable-cascade", {"width": 1000}, "width must be a multiple of 128 for recipe stable-cascade"),
        ("stable-cascade", {"decoder_steps": 0}, "decoder_steps must be between 1 and 150"),
        ("stable-cascade", {"decoder_guidance_scale": -1.0}, r"decoder_guidance_scale \(decoder-guidance\) must be between 0 and 50"),
        ("sdxl-controlnet-canny", {}, r"needs a control image \(--control-image PATH\)"),
        ("sd15", {"loras": tuple(LoraSpec(f"l{i}") for i in range(17))}, "at most 16 LoRAs per request"),
    ],
)
def test_options_a_recipe_has_no_use_for_are_refused(recipe, options, message) -> None:
    with pytest.raises(InvalidRequest, match=message):
        GenerationRequest(prompt="a cat", recipe=recipe, **options).resolve(get_recipe(recipe))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"controlnet_conditioning_scale": 6.0}, r"controlnet_conditioning_scale \(control-scale\) must be between 0 and 5"),
        ({"canny_low": -1}, "canny_low must be between 0 and 1000"),
        ({"canny_low": 300, "canny_high": 200}, r"canny_low \(300\) must not exceed canny_high \(200\)"),
    ],
)
def test_control_options_are_checked(tmp_path, options, message) -> None:
    from PIL import Image

    Image.new("RGB", (96, 64)).save(tmp_path / "photo.png")
    with pytest.raises(InvalidRequest, match=message):
        GenerationRequest(prompt="a cat", recipe="sdxl-controlnet-canny", control_image=str(tmp_path / "photo.png"),
                          **options).resolve(get_recipe("sdxl-controlnet-canny"))


def test_a_control_image_sets_the_size_unless_given(tmp_path) -> None:
    """As diffusers' ControlNet pipelines: the control image's size, rounded down to a multiple of 8."""
    from PIL import Image

    Image.new("RGB", (100, 70)).save(tmp_path / "photo.png")
    recipe = get_recipe("sdxl-controlnet-canny")
    photo = GenerationRequest(prompt="a", recipe=recipe.name, control_image=str(tmp_path / "photo.png"))
    resolved = photo.resolve(recipe)
    assert (resolved.width, resolved.height) == (96, 64)
    assert (resolved.controlnet_conditioning_scale, resolved.canny_low, resolved.canny_high) == (0.5, 100, 200)
    assert resolved.negative_prompt == "low quality, bad quality, sketches"
    wider = replace(photo, width=128).resolve(recipe)
    assert (wider.width, wider.height) == (128, 64)


def test_prompt_lora_tags_join_the_option_loras() -> None:
    resolved = GenerationRequest(prompt="a <lora:ink:0.6> cat <lora:film>", recipe="sdxl-turbo",
                                 loras=(LoraSpec("flat", 0.3),)).resolve(get_recipe("sdxl-turbo"))
    assert resolved.prompt == "a cat"
    assert resolved.loras == (LoraSpec("flat", 0.3), LoraSpec("ink", 0.6), LoraSpec("film", 1.0))
    assert resolved.resolve(get_recipe("sdxl-turbo")) == resolved  # resolving again changes nothing
