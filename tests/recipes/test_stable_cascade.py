"""stable-cascade: the reference tutorial's two calls, pixel for pixel, and its known-bad decoder config repaired."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import reference_tutorial_cascade
from tiny_cascade import CASCADE_TEST_SIZE, write_old_key_decoder_copy

from imagegen.engine import Engine, EngineOptions
from imagegen.models.config_repairs import ConfigRepaired
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("cascade_models")

PROMPT = "Beautiful and cute girl, rain jacket, gradient background, soft colors"
SIZE = {"width": CASCADE_TEST_SIZE, "height": CASCADE_TEST_SIZE}


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def cascade(**options) -> GenerationRequest:
    return GenerationRequest(**{"prompt": PROMPT, "recipe": "stable-cascade", **SIZE, **options})


def test_matches_the_reference_tutorial_pixel_for_pixel(engine) -> None:
    steps = []
    ours = engine.generate(cascade(seed=5, num_inference_steps=4, decoder_steps=3),
                           on_step=lambda done, total: steps.append((done, total)))
    theirs = reference_tutorial_cascade.stable_cascade(PROMPT, seed=5, prior_steps=4, decoder_steps=3)
    np.testing.assert_array_equal(pixels(ours[0].image), pixels(theirs[0]))
    assert steps == [(i, 7) for i in range(1, 8)]  # one count across both stages
    assert "Steps: 4, Sampler: DDPMWuerstchenScheduler, CFG scale: 4.0, Decoder steps: 3, Decoder CFG scale: 0.0" \
        in ours[0].infotext


def test_defaults_are_the_reference_tutorials_and_batches_keep_the_seed_contract(engine) -> None:
    ours = engine.generate(cascade(seed=9, num_images=2))
    request = ours[0].request
    assert (request.num_inference_steps, request.guidance_scale, request.decoder_steps,
            request.decoder_guidance_scale) == (20, 4.0, 10, 0.0)
    theirs = reference_tutorial_cascade.stable_cascade(PROMPT, seed=9, num_images=2)
    for mine, reference in zip(ours, theirs):
        np.testing.assert_array_equal(pixels(mine.image), pixels(reference))


def test_a_decoder_config_with_the_other_diffusers_key_loads_as_meant(engine, cascade_models, tmp_path,
                                                                      monkeypatch) -> None:
    """The reference tutorial's Tips: a config whose in_channels is spelled c_in loads with the default 16 channels
    and fails with "embedding.1.weight expected shape"; imagegen reads the value under the name diffusers expects."""
    copy = write_old_key_decoder_copy(cascade_models, tmp_path / "modelscope")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        repaired = Engine(EngineOptions(device="cpu")).generate(cascade(seed=5, num_inference_steps=2, decoder_steps=2,
                                                                        model=str(copy)))
    assert any(issubclass(w.category, ConfigRepaired) and "'c_in'" in str(w.message) for w in caught)
    normal = engine.generate(cascade(seed=5, num_inference_steps=2, decoder_steps=2))
    np.testing.assert_array_equal(pixels(repaired[0].image), pixels(normal[0].image))
    assert (copy / "decoder" / "config.json").read_text().count('"c_in"') == 1  # the user's file is untouched
