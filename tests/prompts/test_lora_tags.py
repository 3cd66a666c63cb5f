"""A1111's <lora:NAME:WEIGHT> prompt syntax and the --lora option's NAME[:WEIGHT]."""

from __future__ import annotations

import math

import pytest

from imagegen.errors import InvalidRequest
from imagegen.prompts.lora_tags import LoraSpec, split_lora_tags


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ink", LoraSpec("ink", 1.0)),
        ("ink:0.8", LoraSpec("ink", 0.8)),
        ("ink:-1", LoraSpec("ink", -1.0)),
        ("org/repo/style.safetensors:0.5", LoraSpec("org/repo/style.safetensors", 0.5)),
        (r"C:\loras\ink.safetensors", LoraSpec(r"C:\loras\ink.safetensors", 1.0)),
        (r"C:\loras\ink.safetensors:0.7", LoraSpec(r"C:\loras\ink.safetensors", 0.7)),
    ],
)
def test_names_and_weights(text, expected) -> None:
    assert LoraSpec.parse(text) == expected


def test_tags_leave_the_prompt_and_keep_their_order() -> None:
    prompt, loras = split_lora_tags("1 girl, <lora:dunhuang:0.8> dunhuang style,  <lora:film>")
    assert prompt == "1 girl, dunhuang style,"
    assert loras == (LoraSpec("dunhuang", 0.8), LoraSpec("film", 1.0))
    assert split_lora_tags("no tags  here") == ("no tags  here", ())


@pytest.mark.parametrize(("weight", "tag"), [(0.25, "<lora:ink:0.25>"), (1.0, "<lora:ink:1>"),
                                             (0.1234567, "<lora:ink:0.1234567>")])
def test_a_tag_round_trips_exactly(weight, tag) -> None:
    spec = LoraSpec("ink", weight)
    assert spec.tag() == tag
    assert split_lora_tags(spec.tag())[1] == (spec,)


@pytest.mark.parametrize("weight", [math.nan, math.inf, 11.0, True])
def test_bad_weights_are_refused(weight) -> None:
    with pytest.raises(InvalidRequest, match="weight must be a number between -10 and 10"):
        LoraSpec("ink", weight)


def test_an_empty_name_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="a LoRA needs a name"):
        split_lora_tags("<lora: :0.5>")
