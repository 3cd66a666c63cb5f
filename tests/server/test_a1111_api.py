"""The AUTOMATIC1111 API against a real server process: what an A1111 client sends, gets back, and is refused."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from imagegen.options import DEFAULT_RECIPE
from imagegen.outputs.metadata import parse_infotext
from imagegen.recipes import RECIPES

ERROR_KEYS = {"error", "detail", "body", "errors"}  # A1111's error body


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decoded(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def test_txt2img_gives_batch_size_x_n_iter_images_with_consecutive_seeds(server) -> None:
    import imagegen

    body = {"prompt": "7", "seed": 11, "batch_size": 2, "n_iter": 2, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "digits"}}
    with server.client() as client:
        response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    info = json.loads(result["info"])
    defaults = RECIPES["digits"].defaults  # steps and size were left out: the recipe's, not A1111's 20 and 512
    assert info["all_seeds"] == [11, 12, 13, 14] and info["seed"] == 11
    assert (info["steps"], info["width"], info["height"]) == (defaults.num_inference_steps, defaults.width,
                                                              defaults.height)
    assert (info["sampler_name"], info["sd_model_name"], info["batch_size"]) == ("Euler", "digits", 2)
    assert info["all_prompts"] == ["7"] * 4 and info["index_of_first_image"] == 0
    assert result["parameters"]["n_iter"] == 2 and result["parameters"]["seed"] == 11
    images = [decoded(text) for text in result["images"]]
    assert len(images) == 4 and {image.format for image in images} == {"PNG"}
    assert [image.info["parameters"] for image in images] == info["infotexts"]
    assert [parse_infotext(text).params["Seed"] for text in info["infotexts"]] == ["11", "12", "13", "14"]
    alone = imagegen.generate("7", recipe="digits", seed=14, scheduler="euler")[0]  # image i is seed + i's
    np.testing.assert_array_equal(np.asarray(images[3].convert("RGB")), np.asarray(alone.image.convert("RGB")))


def test_img2img_and_inpainting_start_from_the_init_image(server) -> None:
    gradient = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    body = {"prompt": "a red fox", "init_images": [png_base64(Image.fromarray(gradient))], "denoising_strength": 0.5,
            "steps": 2, "cfg_scale": 0, "width": 64, "height": 64, "seed": 3,
            "override_settings": {"sd_model_checkpoint": "sdxl-turbo"}}
    with server.client() as client:
        plain = client.post("/sdapi/v1/img2img", json=body)
        inpainted = client.post("/sdapi/v1/img2img", json={**body, "mask": png_base64(mask)})
    for response in (plain, inpainted):
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        (image,) = [decoded(text) for text in response.json()["images"]]
        assert image.size == (64, 64) and info["denoising_strength"] == 0.5
        assert parse_infotext(image.info["parameters"]).params["Denoising strength"] == "0.5"
        assert response.json()["parameters"]["init_images"] is None  # echoed only with include_init_images


def test_samplers_models_and_options_round_trip(server) -> None:
    with server.client() as client:
        samplers = {sampler["name"]: sampler for sampler in client.get("/sdapi/v1/samplers").json()}
        models = client.get("/sdapi/v1/sd-models").json()
        assert samplers["DPM++ 2M"]["options"] == {"scheduler": "karras"}
        assert all(isinstance(value, str) for sampler in samplers.values() for value in sampler["options"].values())
        assert "dpm++2m-karras" in samplers["DPM++ 2M"]["aliases"] and "Euler a" in samplers
        assert [scheduler["label"] for scheduler in client.get("/sdapi/v1/schedulers").json()] == \
            ["Automatic", "Karras"]
        assert all(set(model) == {"title", "model_name", "hash", "sha256", "filename", "config"} for model in models)
        titles = {model["title"] for model in models}
        assert {"digits", "sdxl-turbo", "sd15"} <= titles and "svd" not in titles  # videos are not A1111 images
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == DEFAULT_RECIPE
        try:
            changed = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sdxl-turbo",
                                                              "CLIP_stop_at_last_layers": 2})
            assert changed.status_code == 200 and changed.json() == {"ignored": ["CLIP_stop_at_last_layers"]}
            assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "sdxl-turbo"
            # no override: the checkpoint set above; an old-style sampler name carries its schedule type
            response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 1, "width": 64, "height": 64,
                                                              "sampler_name": "DPM++ 2M Karras",
                                                              "override_settings": None})
            assert response.status_code == 200, response.text
            info = json.loads(response.json()["info"])
            params = parse_infotext(info["infotexts"][0]).params
            assert info["sd_model_name"] == "sdxl-turbo" and params["Recipe"] == "sdxl-turbo"
            assert (params["Sampler"], params["Schedule type"]) == ("DPM++ 2M", "Karras")
            assert info["extra_generation_params"]["Schedule type"] == "Karras"
            refused = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "v1-5-pruned.safetensors"})
            assert refused.status_code == 422 and "unknown checkpoint" in refused.json()["detail"]
        finally:
            client.post("/sdapi/v1/options", json={"sd_model_checkpoint": DEFAULT_RECIPE})


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("txt2img", {"prompt": "7", "sampler_name": "Nope"}, "unknown sampler 'Nope'"),
        ("txt2img", {"prompt": "7", "sampler_name": "Euler", "scheduler": "Karras"},
         "unknown sampler 'Euler' with scheduler 'Karras'"),
        ("txt2img", {"prompt": "7", "enable_hr": True}, "unsupported option(s): enable_hr"),
        ("txt2img", {"prompt": "7", "batch_size": 4, "n_iter": 5}, "batch_size x n_iter = 20 images"),
        ("txt2img", {"prompt": "7", "width": 100}, "width must be a multiple of 8"),
        ("txt2img", {"prompt": "banana", "override_settings": {"sd_model_checkpoint": "digits"}},
         "this model knows no class 'banana'"),
        ("txt2img", {"prompt": "7", "override_settings": {"sd_model_checkpoint": "svd"}}, "unknown checkpoint 'svd'"),
        ("img2img", {"prompt": "7"}, "img2img needs init_images"),
        ("img2img", {"prompt": "7", "init_images": ["bm90IGFuIGltYWdl"],
                     "override_settings": {"sd_model_checkpoint": "sd15"}}, "init image is not an image"),
    ],
)
def test_refusals_carry_a1111s_error_body(server, path, body, message) -> None:
    with server.client() as client:
        response = client.post(f"/sdapi/v1/{path}", json=body)
    assert response.status_code == 422, response.text
    assert set(response.json()) == ERROR_KEYS and message in response.json()["detail"]


def test_progress_follows_a_running_call_and_interrupt_stops_it(server) -> None:
    with server.client() as client:
        idle = client.get("/sdapi/v1/progress").json()
        assert (idle["progress"], idle["state"]["job_count"], idle["current_image"]) == (0, 0, None)
        long_call = {"prompt": "a cat", "steps": 150, "n_iter": 16, "width": 64, "height": 64,
                     "override_settings": {"sd_model_checkpoint": "sd15"}}
        with ThreadPoolExecutor(1) as pool, server.client() as caller:
            pending = pool.submit(caller.post, "/sdapi/v1/txt2img", json=long_call)
            deadline = time.monotonic() + 60
            while (progress := client.get("/sdapi/v1/progress").json())["state"]["sampling_step"] == 0:
                assert time.monotonic() < deadline and not pending.done(), "the call never started sampling"
                time.sleep(0.05)
            assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
            assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_steps"] >= 150
            assert client.post("/sdapi/v1/interrupt").json() == {}
            response = pending.result(timeout=60)
    assert response.status_code == 200  # as A1111: an interrupted call answers with what it has (nothing here)
    assert response.json()["images"] == [] and json.loads(response.json()["info"])["infotexts"] == []


def test_http_basic_auth_with_the_key_as_password(server) -> None:
    assert httpx.get(f"{server.url}/sdapi/v1/options", auth=("anyone", server.api_key)).status_code == 200
    assert httpx.get(f"{server.url}/sdapi/v1/options", auth=("anyone", "wrong")).status_code == 401
    assert httpx.get(f"{server.url}/sdapi/v1/sd-models").status_code == 401
