"""The Python entry point: `imagegen.generate`."""

from __future__ import annotations

import numpy as np
import pytest

import imagegen
from imagegen.errors import InvalidRequest


def test_generate_defaults_to_the_built_in_model() -> None:
    images = imagegen.generate("3", seed=8, num_images=2, width=8, height=8)
    assert [image.seed for image in images] == [8, 9]
    assert images[0].image.size == (8, 8)
    again = imagegen.generate("three", recipe="digits", seed=9, width=8, height=8)
    np.testing.assert_array_equal(np.asarray(again[0].image), np.asarray(images[1].image))


def test_unknown_options_are_named() -> None:
    with pytest.raises(InvalidRequest, match="unknown option.*steps"):
        imagegen.generate("3", steps=4)


@pytest.mark.parametrize(
    ("recipe", "options"),
    [
        ("sd15", {"num_inference_steps": 2, "width": 64, "height": 64, "loras": ["sd15_peft:0.5"]}),
        ("stable-cascade", {"num_inference_steps": 2, "decoder_steps": 2, "width": 128, "height": 128}),
        ("sdxl-controlnet-canny", {"num_inference_steps": 2, "width": 64, "height": 64, "control_image": "photo.png"}),
    ],
)
def test_every_recipe_runs_from_python(sd15_models, cascade_models, controlnet_models, tmp_path, monkeypatch, recipe,
                                       options) -> None:
    from tiny_controlnet import write_edge_test_image
    from tiny_sd15 import write_loras

    write_loras(tmp_path)
    write_edge_test_image(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGEGEN_LORA_DIR", str(tmp_path))
    images = imagegen.generate("a cat", recipe=recipe, seed=3, **options)
    assert images[0].image.size == (options["width"], options["height"])
    assert f"Recipe: {recipe}" in images[0].infotext
