"""sdxl-controlnet-canny: the reference tutorial's snippet pixel for pixel, other ControlNets, bad control images."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import reference_tutorial_controlnet
from PIL import Image
from tiny_controlnet import CONTROLNET_DEPTH, edge_test_image, write_edge_test_image

from imagegen.errors import InvalidImage, InvalidRequest
from imagegen.parameters import request_from_infotext
from imagegen.pipelines.control import control_image
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("controlnet_models")

PROMPT = "sea turtle, hard lighting"
STEPS = 3


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def controlnet(photo, **options) -> GenerationRequest:
    return GenerationRequest(**{"prompt": PROMPT, "recipe": "sdxl-controlnet-canny", "control_image": str(photo),
                                "num_inference_steps": STEPS, **options})


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return write_edge_test_image(tmp_path_factory.mktemp("control") / "canny.jpg", size=(72, 64))


def test_matches_the_reference_tutorial_pixel_for_pixel(engine, photo) -> None:
    ours = engine.generate(controlnet(photo, seed=8))
    theirs, edges = reference_tutorial_controlnet.sdxl_controlnet_canny(PROMPT, Image.open(photo), seed=8, steps=STEPS)
    assert ours[0].image.size == (72, 64)  # the control image's size, as the reference tutorial gets it
    np.testing.assert_array_equal(pixels(ours[0].image), pixels(theirs[0]))
    np.testing.assert_array_equal(pixels(control_image(ours[0].request)), pixels(edges))
    assert 'ControlNet 0: "Module: canny, Model: diffusers/controlnet-canny-sdxl-1.0, Weight: 0.5, Threshold A: 100, ' \
           'Threshold B: 200"' in ours[0].infotext
    assert "Negative prompt: low quality, bad quality, sketches" in ours[0].infotext


def test_thresholds_scale_and_replay(engine, photo) -> None:
    first = engine.generate(controlnet(photo, seed=8, canny_low=50, canny_high=120, controlnet_conditioning_scale=0.8))
    theirs, _ = reference_tutorial_controlnet.sdxl_controlnet_canny(
        PROMPT, Image.open(photo), seed=8, steps=STEPS, low=50, high=120, controlnet_conditioning_scale=0.8)
    np.testing.assert_array_equal(pixels(first[0].image), pixels(theirs[0]))
    replay = request_from_infotext(first[0].infotext)
    assert (replay.canny_low, replay.canny_high, replay.controlnet_conditioning_scale) == (50, 120, 0.8)
    again = engine.generate(GenerationRequest(**{**replay.__dict__, "control_image": str(photo)}))
    np.testing.assert_array_equal(pixels(again[0].image), pixels(first[0].image))


def test_another_controlnet_with_a_prepared_map(engine, tmp_path) -> None:
    depth = edge_test_image((64, 64)).convert("L").convert("RGB")
    depth.save(tmp_path / "depth.png")
    ours = engine.generate(controlnet(tmp_path / "depth.png", seed=2, controlnet=CONTROLNET_DEPTH,
                                      control_is_edges=True))
    theirs, _ = reference_tutorial_controlnet.sdxl_controlnet_canny(PROMPT, depth, seed=2, steps=STEPS,
                                                                controlnet_id=CONTROLNET_DEPTH, preprocess=False)
    np.testing.assert_array_equal(pixels(ours[0].image), pixels(theirs[0]))
    assert f"Module: none, Model: {CONTROLNET_DEPTH}, Weight: 0.5" in ours[0].infotext


def test_bad_control_images_are_clear_errors(engine, tmp_path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    data = (tmp_path / "whole.png")
    edge_test_image((64, 64)).save(data)
    (tmp_path / "truncated.png").write_bytes(data.read_bytes()[:300])
    Image.new("I;16", (64, 64)).save(tmp_path / "sixteen.png")
    huge = tmp_path / "huge.png"
    Image.new("1", (5000, 5000)).save(huge)
    for name, message in [("missing.png", "does not exist"), ("notes.png", "cannot be read as an image"),
                          ("truncated.png", "cannot be read as an image"), ("huge.png", "at most 16777216 pixels")]:
        with pytest.raises(InvalidImage, match=f"control image .*{name}.*{message}"):
            engine.generate(controlnet(tmp_path / name, seed=1))
    ours = engine.generate(controlnet(tmp_path / "sixteen.png", seed=1))  # 16-bit grey converts to RGB
    assert ours[0].image.size == (64, 64)


@pytest.mark.slow
def test_cli_saves_the_edge_map_beside_the_result(photo, tmp_path) -> None:
    out = tmp_path / "turtle.png"
    result = subprocess.run([sys.executable, "-m", "imagegen.cli", "generate", PROMPT, "--recipe",
                             "sdxl-controlnet-canny", "--control-image", str(photo), "--steps", "2", "--seed", "1",
                             "-o", str(out), "--save-control", "-q"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out), str(tmp_path / "turtle-control.png")]
    edges = Image.open(tmp_path / "turtle-control.png")
    assert edges.size == (72, 64) and set(np.unique(pixels(edges))) <= {0, 255}


def test_a_single_file_sdxl_checkpoint_goes_into_the_controlnet_pipeline(engine, controlnet_models, photo,
                                                                         tmp_path) -> None:
    from single_file_checkpoint import write_sdxl_single_file
    from tiny_models import SDXL_BASE, snapshot_path

    checkpoint = write_sdxl_single_file(snapshot_path(controlnet_models, SDXL_BASE), tmp_path / "sdxl.safetensors")
    from_file = engine.generate(controlnet(photo, seed=8, model=str(checkpoint)))
    from_folder = engine.generate(controlnet(photo, seed=8))
    np.testing.assert_array_equal(pixels(from_file[0].image), pixels(from_folder[0].image))


def test_an_sd15_controlnet_is_refused_with_a_reason(engine, sd15_models, photo, tmp_path) -> None:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel
    from tiny_models import snapshot_path
    from tiny_sd15 import SD15

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(snapshot_path(sd15_models, SD15) / "unet")
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32)).save_pretrained(tmp_path / "cn15")
    with pytest.raises(InvalidRequest, match="is not made for SDXL"):
        engine.generate(controlnet(photo, seed=1, controlnet=str(tmp_path / "cn15"), control_is_edges=True))
