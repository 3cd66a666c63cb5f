"""The `fast` option through every API: method names, or true ("all") and false (none), recorded in the infotext."""

from __future__ import annotations

import base64
import io
import json

from PIL import Image
from server.test_native_api import wait_done

from imagegen.outputs.metadata import parse_infotext

SD15_SMALL = {"width": 64, "height": 64, "seed": 1}


def fast_of(infotext: str) -> str | None:
    return parse_infotext(infotext).params.get("Fast")


def test_fast_true_false_and_names_through_the_native_a1111_and_openai_apis(server) -> None:
    with server.client() as client:
        recipes = {recipe["name"]: recipe["fast"] for recipe in client.get("/v1/recipes").json()}
        native = client.post("/v1/jobs", json={"prompt": "a fox", "recipe": "sd15", "num_inference_steps": 2,
                                               "fast": True, **SD15_SMALL})
        assert native.status_code == 202, native.text
        job = wait_done(client, native.json()["id"])
        a1111 = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "steps": 2, "fast": "int8", **SD15_SMALL,
                                                       "override_settings": {"sd_model_checkpoint": "sd15"}})
        openai = client.post("/v1/images/generations", json={"prompt": "7", "model": "digits", "fast": False,
                                                             "response_format": "b64_json"})
        wrong = client.post("/v1/jobs", json={"prompt": "a fox", "recipe": "sd15", "fast": "turbo"})
    assert list(recipes["sd15"]) == ["tiny-vae", "bf16", "step-cache", "compile", "int8", "fp8"]
    assert recipes["digits"] == {}
    assert job["state"] == "done", job
    assert fast_of(job["images"][0]["infotext"]).startswith("tiny-vae")  # all (bf16 too, where the CPU has it)
    assert a1111.status_code == 200, a1111.text
    assert fast_of(json.loads(a1111.json()["info"])["infotexts"][0]) == "int8"
    assert openai.status_code == 200, openai.text
    image = Image.open(io.BytesIO(base64.b64decode(openai.json()["data"][0]["b64_json"])))
    assert fast_of(image.info["parameters"]) is None
    assert wrong.status_code == 422 and "unknown fast method 'turbo'" in wrong.json()["detail"]
