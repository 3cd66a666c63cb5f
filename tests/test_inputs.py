"""img2img and inpainting on the UNet recipes: the same pixels as diffusers' AutoPipelines, no second copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import reference_tutorial
from PIL import Image

from imagegen.errors import InvalidImage, InvalidRequest
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("sdxl_models")

PROMPT = "a cat wearing a hat"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    gradient = np.linspace(0, 255, 96 * 80, dtype=np.uint8).reshape(80, 96)
    Image.fromarray(np.stack([gradient, gradient[::-1], gradient], -1)).save(
        folder / "init.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    return folder / "init.png", folder / "mask.png"


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_img2img_matches_diffusers_and_shares_the_weights(engine, inputs) -> None:
    init, _ = inputs
    request = GenerationRequest(prompt=PROMPT, recipe="sdxl-turbo", seed=6, num_inference_steps=2, strength=0.5,
                                width=64, height=64, init_image=str(init))
    ours = engine.generate(request)
    reference = reference_tutorial.sdxl_turbo_img2img(PROMPT, Image.open(init).convert("RGB").resize((64, 64)), seed=6)
    np.testing.assert_array_equal(pixels(ours[0].image), pixels(reference[0]))
    assert "Denoising strength: 0.5," in ours[0].infotext
    pipelines = [entry[0] for entry in engine._pipelines.values()]
    text_pipe, image_pipe = pipelines[-2:]
    assert type(image_pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert image_pipe.unet is text_pipe.unet and image_pipe.vae is text_pipe.vae


def test_inpainting_matches_diffusers(engine, inputs) -> None:
    init, mask = inputs
    ours = engine.generate(GenerationRequest(prompt=PROMPT, recipe="sdxl", seed=2, num_inference_steps=3,
                                             width=64, height=64, init_image=str(init), mask_image=str(mask)))
    reference = reference_tutorial.sdxl_inpaint(PROMPT, Image.open(init).convert("RGB").resize((64, 64)),
                                            Image.open(mask).convert("L"), seed=2)
    np.testing.assert_array_equal(pixels(ours[0].image), pixels(reference[0]))
    assert "Denoising strength: 0.75," in ours[0].infotext


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"strength": 0.5}, InvalidRequest, "strength applies to an init image"),
        ({"mask_image": "m.png"}, InvalidRequest, "a mask needs an init image"),
        ({"init_image": "x.png", "strength": 1.5}, InvalidRequest, "strength must be between 0 and 1, got 1.5"),
        ({"init_image": "x.png", "num_inference_steps": 1, "strength": 0.5}, InvalidRequest,
         "steps x strength must reach 1 denoising step, got 1 x 0.5"),
        ({"init_image": "/no/such.png"}, InvalidImage, "init image /no/such.png does not exist"),
    ],
)
def test_bad_image_inputs(engine, options, error, message) -> None:
    with pytest.raises(error, match=message):
        engine.generate(GenerationRequest(**{"prompt": PROMPT, "recipe": "sdxl-turbo", "width": 64, "height": 64,
                                             "num_inference_steps": 2, **options}))


def test_recipes_without_image_inputs_refuse_them(engine, inputs) -> None:
    with pytest.raises(InvalidRequest, match="recipe digits does not take an init image"):
        engine.generate(GenerationRequest(prompt="7", recipe="digits", init_image=str(inputs[0])))


def test_not_an_image_and_a_decompression_bomb_are_refused(engine, tmp_path) -> None:
    (tmp_path / "text.png").write_text("not an image")
    request = GenerationRequest(prompt=PROMPT, recipe="sdxl-turbo", width=64, height=64, num_inference_steps=2)
    with pytest.raises(InvalidImage, match="cannot be read as an image"):
        engine.generate(GenerationRequest(**{**request.__dict__, "init_image": str(tmp_path / "text.png")}))
    Image.new("1", (20_000, 20_000)).save(tmp_path / "bomb.png")  # 400 M pixels, a few kB on disk
    with pytest.raises(InvalidImage, match="far too large; at most 16777216 pixels"):
        engine.generate(GenerationRequest(**{**request.__dict__, "init_image": str(tmp_path / "bomb.png")}))
    Image.new("1", (5_000, 5_000)).save(tmp_path / "big.png")  # past our limit, under Pillow's
    with pytest.raises(InvalidImage, match="is 5000x5000; at most 16777216 pixels"):
        engine.generate(GenerationRequest(**{**request.__dict__, "init_image": str(tmp_path / "big.png")}))


def test_a_scheduler_chosen_for_one_request_does_not_stick(engine, inputs) -> None:
    """A txt2img request with --scheduler ddim must not leak DDIM into the next img2img pipeline."""
    init, _ = inputs
    img2img = GenerationRequest(prompt=PROMPT, recipe="sdxl-lightning", seed=3, num_inference_steps=4,
                                strength=0.5, width=64, height=64, init_image=str(init))
    engine.generate(GenerationRequest(prompt=PROMPT, recipe="sdxl-lightning", seed=3, width=64, height=64,
                                      scheduler="ddim"))
    after_ddim = engine.generate(img2img)[0]
    assert "Sampler: Euler," in after_ddim.infotext
    from imagegen.engine import Engine, EngineOptions

    fresh = Engine(EngineOptions(device="cpu")).generate(img2img)[0]
    np.testing.assert_array_equal(pixels(after_ddim.image), pixels(fresh.image))


def test_turbo_img2img_takes_its_model_cards_defaults(engine, inputs) -> None:
    """SDXL-Turbo's card: img2img at 2 steps x strength 0.5 (1 step at 0.75 would denoise for no step)."""
    init = inputs[0]
    ours = engine.generate(GenerationRequest(prompt=PROMPT, recipe="sdxl-turbo", seed=6, width=64, height=64,
                                             init_image=str(init)))
    assert (ours[0].request.num_inference_steps, ours[0].request.strength) == (2, 0.5)
    reference = reference_tutorial.sdxl_turbo_img2img(PROMPT, Image.open(init).convert("RGB").resize((64, 64)), seed=6)
    np.testing.assert_array_equal(np.asarray(ours[0].image), np.asarray(reference[0]))
