"""OpenAI's Images API against a real server process, through OpenAI's own Python client, unchanged."""

from __future__ import annotations

import base64
import io
import time

import httpx
import openai
import pytest
from PIL import Image
from server.conftest import start_server

from imagegen.options import DEFAULT_RECIPE
from imagegen.outputs.metadata import parse_infotext, read_infotext
from imagegen.recipes import RECIPES


def openai_client(server, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", **{"api_key": server.api_key, **options})


def test_b64_images_have_the_size_count_and_parameters_asked_for(server, tmp_path) -> None:
    response = openai_client(server).images.generate(model="digits", prompt="7", n=2, size="256x256",
                                                     response_format="b64_json", extra_body={"seed": 11})
    assert len(response.data) == 2 and abs(response.created - time.time()) < 120
    for index, image in enumerate(response.data):
        assert image.url is None and image.revised_prompt == "7"
        path = tmp_path / f"{index}.png"
        path.write_bytes(base64.b64decode(image.b64_json))
        with Image.open(path) as png:
            assert (png.format, png.size) == ("PNG", (256, 256))
        infotext = parse_infotext(read_infotext(path))
        assert infotext.prompt == "7"
        assert (infotext.params["Seed"], infotext.params["Size"]) == (str(11 + index), "256x256")


def test_url_images_are_served_to_the_key_holder(server) -> None:
    """OpenAI's model names mean the default recipe; no size means its default size; the job is in the history."""
    raw = openai_client(server).images.with_raw_response.generate(model="dall-e-3", prompt="3", response_format="url")
    response = raw.parse()
    (image,) = response.data
    assert image.b64_json is None and image.url.startswith(f"{server.url}/v1/images/")
    assert httpx.get(image.url).status_code == 401
    with server.client() as client:
        fetched = client.get(image.url)
        job = client.get(f"/v1/jobs/{raw.headers['x-imagegen-job']}").json()
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    defaults = RECIPES[DEFAULT_RECIPE].defaults
    assert Image.open(io.BytesIO(fetched.content)).size == (defaults.width, defaults.height)
    assert response.size == f"{defaults.width}x{defaults.height}"
    assert job["recipe"] == DEFAULT_RECIPE and image.url.endswith(job["images"][0]["url"])


def test_openai_only_options_are_accepted_and_the_output_format_is_honoured(server, tmp_path) -> None:
    response = openai_client(server).images.generate(
        prompt="5", quality="high", style="natural", moderation="low", background="opaque", output_compression=80,
        user="someone", output_format="jpeg")
    assert response.output_format == "jpeg" and response.data[0].url is None  # b64_json is the default
    path = tmp_path / "5.jpg"
    path.write_bytes(base64.b64decode(response.data[0].b64_json))
    assert Image.open(path).format == "JPEG" and parse_infotext(read_infotext(path)).prompt == "5"


@pytest.mark.parametrize(
    ("options", "param", "message"),
    [
        ({"size": "100x100"}, "size", "width must be a multiple of 8"),
        ({"size": "large"}, "size", "size must be 'auto' or WIDTHxHEIGHT"),
        ({"model": "nope"}, "model", "unknown model 'nope'"),
        ({"model": "svd"}, "model", "recipe svd makes videos"),
        ({"n": 0}, "n", "num_images (n) must be between 1 and 16"),
        ({"response_format": "png"}, "response_format", "response_format must be 'b64_json' or 'url'"),
        ({"output_format": "gif"}, "output_format", "output_format must be one of png, jpeg, webp"),
        ({"background": "transparent"}, "background", "transparent backgrounds are not supported"),
        ({"stream": True}, "stream", "streaming is not supported"),
        ({"extra_body": {"steps": 3}}, "steps", "Unrecognized request argument supplied: steps"),
        ({"extra_body": {"n": "2"}}, "n", "n: Input should be a valid integer"),
    ],
)
def test_bad_requests_raise_the_clients_bad_request_error(server, options, param, message) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(server).images.generate(prompt="7", **options)
    error = raised.value.body
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert message in error["message"]


def test_errors_have_openais_shape(server) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(server).images.generate(prompt="7", model="nope")
    assert raised.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError) as raised:
        openai_client(server, api_key="wrong").images.generate(prompt="7")
    assert raised.value.body["code"] == "invalid_api_key"
    unauthenticated = httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "7"})
    assert unauthenticated.status_code == 401 and set(unauthenticated.json()["error"]) == {"message", "type", "param",
                                                                                             "code"}
    broken = httpx.post(f"{server.url}/v1/images/generations", content=b"{not json",
                        headers={"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"


def test_a_prompt_the_model_cannot_read_is_refused_before_it_queues(server) -> None:
    """The digits model knows no class "no such digit": the request is at fault, so it is a 400 and no job."""
    def jobs_with_the_prompt(client: httpx.Client) -> int:
        jobs = client.get("/v1/jobs", params={"limit": 200}).json()["jobs"]
        return sum(job["prompt"] == "no such digit" for job in jobs)

    with server.client() as client:
        before = jobs_with_the_prompt(client)
        with pytest.raises(openai.BadRequestError) as raised:
            openai_client(server).images.generate(model="digits", prompt="no such digit")
        assert jobs_with_the_prompt(client) == before
    assert raised.value.body["type"] == "invalid_request_error"
    assert "this model knows no class 'no such digit'" in raised.value.body["message"]


def test_a_job_that_fails_when_it_runs_has_its_errors_status_and_is_not_retried(server) -> None:
    """An SD 1.5 LoRA on SDXL-Turbo is found not to fit only once the job runs: the client's mistake (404, the
    model lacks what the LoRA needs), answered with x-should-retry: false, since OpenAI's client would otherwise
    run the failing job again."""
    with server.client() as client:
        before = len(client.get("/v1/jobs", params={"limit": 200}).json()["jobs"])
        with pytest.raises(openai.NotFoundError) as raised:
            openai_client(server).images.generate(model="sdxl-turbo", prompt="a cat <lora:sd15_peft:1>", size="64x64")
        assert len(client.get("/v1/jobs", params={"limit": 200}).json()["jobs"]) == before + 1
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert (raised.value.body["type"], raised.value.body["code"]) == ("invalid_request_error", "job_failed")
    assert "does not fit this model" in raised.value.body["message"]


def test_a_client_that_disconnects_does_not_lose_its_job(server) -> None:
    seed = 424242
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/v1/images/generations", timeout=0.05,
                   json={"prompt": "2", "seed": seed, "num_inference_steps": 150},
                   headers={"Authorization": f"Bearer {server.api_key}"})
    with server.client() as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = [job for job in client.get("/v1/jobs", params={"limit": 50}).json()["jobs"] if job["seed"] == seed]
            if jobs and jobs[0]["state"] == "done":
                break
            time.sleep(0.1)
    assert len(jobs) == 1 and jobs[0]["state"] == "done" and jobs[0]["images"][0]["seed"] == seed


def test_a_full_queue_is_a_rate_limit_error_with_retry_after(server_env, tmp_path) -> None:
    """A slow job runs (seconds), another waits in the one-job queue; the OpenAI call is refused at once."""
    busy = start_server(tmp_path, server_env, "--max-queue", "1")
    slow = {"prompt": "a cat", "recipe": "sd15", "width": 64, "height": 64, "num_inference_steps": 150}
    try:
        with busy.client() as client:
            running = client.post("/v1/jobs", json=slow).json()["id"]
            while client.get(f"/v1/jobs/{running}").json()["state"] == "queued":
                time.sleep(0.01)
            assert client.post("/v1/jobs", json=slow).status_code == 202
            with pytest.raises(openai.RateLimitError) as raised:
                openai_client(busy, max_retries=0).images.generate(prompt="7")
    finally:
        busy.process.kill()  # a graceful stop would wait for the slow job; this server's data is thrown away
        busy.process.wait()
    assert raised.value.response.headers["retry-after"].isdigit()
    assert (raised.value.body["type"], raised.value.body["code"]) == ("rate_limit_error", "queue_full")


def test_the_model_list_names_the_image_recipes(server) -> None:
    names = [model.id for model in openai_client(server).models.list()]
    assert names == [name for name, recipe in RECIPES.items() if not recipe.video]
    assert DEFAULT_RECIPE in names and "svd" not in names
