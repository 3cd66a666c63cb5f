"""The option table is the one place options are declared: everything else must follow it."""

from __future__ import annotations

import dataclasses

import pytest

import imagegen
from imagegen.cli import build_parser
from imagegen.options import OPTIONS
from imagegen.parameters import infotext_for, request_from_infotext
from imagegen.recipes import get_recipe
from imagegen.recipes.base import Defaults
from imagegen.request import GenerationRequest


def _generate_parser():
    return build_parser()._subparsers._group_actions[0].choices["generate"]


def test_every_request_field_is_an_option_and_every_option_a_field() -> None:
    assert [field.name for field in dataclasses.fields(GenerationRequest)] == list(OPTIONS)


def test_every_option_with_a_flag_is_a_generate_flag_with_its_help() -> None:
    actions = {action.dest: action for action in _generate_parser()._actions}
    for name, option in OPTIONS.items():
        if option.cli_flag is None:
            continue
        assert option.cli_flag in actions[name].option_strings
        assert actions[name].help.startswith(option.help)


def test_help_shows_each_recipes_own_default() -> None:
    """The help once said --strength 0.75 where sdxl-turbo's default is 0.5; now the recipes' values are shown."""
    strength = next(action for action in _generate_parser()._actions if action.dest == "strength")
    assert "0.5 for sdxl-turbo" in strength.help and "0.75" in strength.help


def test_recipe_defaults_are_the_per_recipe_options() -> None:
    per_recipe = {name for name, option in OPTIONS.items() if option.per_recipe}
    assert {field.name for field in dataclasses.fields(Defaults)} == per_recipe | {"img2img_steps"}


def test_api_bodies_carry_the_options_under_their_names() -> None:
    from imagegen.server.api_a1111 import Txt2ImgBody
    from imagegen.server.api_openai import ImageGenerationBody
    from imagegen.server.app import JobBody

    assert set(OPTIONS) <= set(JobBody.model_fields)
    assert {o.a1111 for o in OPTIONS.values() if o.a1111} <= set(Txt2ImgBody.model_fields)
    assert {o.openai for o in OPTIONS.values() if o.openai} <= set(ImageGenerationBody.model_fields)


@pytest.mark.parametrize("recipe", ["sdxl", "stable-cascade", "svd", "sdxl-turbo"])
def test_every_infotext_option_survives_the_round_trip(recipe: str, tmp_path) -> None:
    """Write a resolved request's infotext and read it back: every option the table gives a key comes back."""
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64)).save(image)
    request = GenerationRequest(prompt="" if recipe == "svd" else "a cat", recipe=recipe, seed=7,
                                init_image=str(image) if recipe in ("svd", "sdxl-turbo") else None)
    resolved = request.resolve(get_recipe(recipe))
    from imagegen.models.schedulers import SCHEDULERS

    back = request_from_infotext(infotext_for(resolved, resolved.seed, SCHEDULERS["euler"]))
    for name, option in OPTIONS.items():
        if option.infotext or name in ("width", "height", "prompt", "negative_prompt", "recipe"):
            assert getattr(back, name) == getattr(resolved, name), name


def test_a_request_without_a_recipe_takes_the_default_one() -> None:
    request = imagegen.GenerationRequest("7")
    assert request.recipe == "digits"
    assert request.resolve(get_recipe(request.recipe)).width == 256
