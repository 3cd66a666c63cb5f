"""The native job API against a real server process: submit, follow, cancel, list, fetch, and refusals."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from imagegen.outputs.metadata import parse_infotext


def wait_done(client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def test_a_digits_job_runs_and_its_image_carries_the_parameters(server, tmp_path) -> None:
    import imagegen

    with server.client() as client:
        accepted = client.post("/v1/jobs", json={"prompt": "7", "recipe": "digits", "seed": 5, "num_images": 2})
        assert accepted.status_code == 202
        job = wait_done(client, accepted.json()["id"])
        assert job["state"] == "done" and [image["seed"] for image in job["images"]] == [5, 6]
        png = client.get(job["images"][0]["url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    (tmp_path / "served.png").write_bytes(png.content)
    local = imagegen.generate("7", recipe="digits", seed=5)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "served.png").convert("RGB")),
                                  np.asarray(local.image.convert("RGB")))
    assert parse_infotext(job["images"][0]["infotext"]).params["Seed"] == "5"


def test_events_report_progress_then_done(server) -> None:
    with server.client() as client:
        job_id = client.post("/v1/jobs", json={"prompt": "3", "recipe": "digits", "num_inference_steps": 6}).json()["id"]
        events = []
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    events.append(line.removeprefix("event: "))
    assert events[-1] == "done"
    assert set(events) <= {"queued", "progress", "done"}


def test_cancel_a_queued_job_and_the_history_lists_it(server) -> None:
    with server.client() as client:
        slow = client.post("/v1/jobs", json={"prompt": "a cat", "recipe": "sd15", "width": 64, "height": 64,
                                             "num_inference_steps": 30}).json()["id"]
        queued = client.post("/v1/jobs", json={"prompt": "1", "recipe": "digits"}).json()["id"]
        cancelled = client.delete(f"/v1/jobs/{queued}").json()
        assert cancelled["state"] == "cancelled"
        running = client.delete(f"/v1/jobs/{slow}")
        assert running.status_code == 200
        assert wait_done(client, slow)["state"] in ("cancelled", "done")
        ids = [job["id"] for job in client.get("/v1/jobs", params={"limit": 10}).json()["jobs"]]
        assert queued in ids and slow in ids


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"prompt": "7", "recipe": "digits", "width": 100}, 422, "width must be a multiple of 8"),
        ({"prompt": "7", "recipe": "nope"}, 422, "unknown recipe 'nope'"),
        ({"prompt": "7", "recipe": "digits", "steps": 3}, 422, "unknown option(s): steps"),
        ({"prompt": "a", "recipe": "sd15", "loras": ["../../etc/passwd"]}, 422, "not a path"),
        ({"prompt": "a", "recipe": "sd15", "loras": ["/tmp/x.safetensors"]}, 422, "not a path"),
        ({"prompt": "a", "recipe": "sd15", "loras": ["missing-lora"]}, 404, "not in the server's LoRA folder"),
        ({"prompt": "a", "recipe": "sd15", "model": "/etc"}, 422, "name a hub id"),
        ({"prompt": "a", "recipe": "sd15", "model": "org/repo/../../x"}, 422, "name a hub id"),
        ({"prompt": "a", "recipe": "sd15", "init_image": "bm90IGFuIGltYWdl"}, 422, "init image is not an image"),
        ({"prompt": "banana", "recipe": "digits"}, 422, "this model knows no class 'banana'"),
        ({"prompt": " ", "recipe": "digits"}, 422, "this model needs a class as its prompt"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(server, body, status, message) -> None:
    with server.client() as client:
        response = client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_a_key_is_required_and_checked(server) -> None:
    import httpx

    assert httpx.get(f"{server.url}/health").status_code == 200  # open: load balancers probe it
    assert httpx.get(f"{server.url}/v1/recipes").status_code == 401
    assert httpx.get(f"{server.url}/v1/recipes", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{server.url}/v1/recipes", auth=("anyone", server.api_key)).status_code == 200


def test_metrics_count_jobs_and_images(server) -> None:
    with server.client() as client:
        wait_done(client, client.post("/v1/jobs", json={"prompt": "4", "recipe": "digits"}).json()["id"])
        text = client.get("/metrics").text
    assert "imagegen_queue_depth" in text and 'imagegen_jobs_finished_total{outcome="done"}' in text
    assert "imagegen_images_generated_total" in text and "imagegen_step_seconds_bucket" in text


def test_images_are_served_from_the_images_folder_only(server) -> None:
    with server.client() as client:
        assert client.get("/v1/images/..%2Fjobs.sqlite3").status_code == 404
        assert client.get("/v1/images/.hidden").status_code == 404
        assert json.loads(client.get("/v1/recipes").text)[0]["name"] == "digits"


def test_a_page_on_another_site_cannot_drive_the_server(server) -> None:
    with server.client() as client:
        foreign = client.post("/v1/jobs", json={"prompt": "7", "recipe": "digits"},
                              headers={"Origin": "http://evil.example"})
        same = client.get("/v1/recipes", headers={"Origin": server.url})
    assert foreign.status_code == 403 and "not accepted" in foreign.json()["detail"]
    assert same.status_code == 200 and [r["name"] for r in same.json() if r["default"]] == ["digits"]


def test_uploads_are_checked_before_decoding(server) -> None:
    import base64
    import io

    bomb = io.BytesIO()
    Image.new("1", (5000, 5000)).save(bomb, format="PNG")  # 25 M pixels in a few kB
    gif = io.BytesIO()
    Image.new("RGB", (64, 64)).save(gif, format="GIF")
    with server.client() as client:
        for data, message in ((bomb.getvalue(), "at most 16777216 pixels"), (gif.getvalue(), "GIF images are not accepted")):
            response = client.post("/v1/jobs", json={"prompt": "a", "recipe": "sd15", "width": 64, "height": 64,
                                                     "init_image": base64.b64encode(data).decode()})
            assert response.status_code == 422 and message in response.json()["detail"]
        too_big = client.post("/v1/jobs", content=b"x" * (33 * 1024 * 1024), headers={"Content-Type": "application/json"})
        assert too_big.status_code == 413


def test_a_symbolic_link_out_of_the_lora_folder_is_refused(server, server_env, tmp_path) -> None:
    from pathlib import Path

    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    link = Path(server_env["IMAGEGEN_LORA_DIR"]) / "escape.safetensors"
    link.symlink_to(outside)
    try:
        with server.client() as client:
            response = client.post("/v1/jobs", json={"prompt": "a", "recipe": "sd15", "loras": ["escape"]})
        assert response.status_code == 422 and "leads out of the server's LoRA folder" in response.json()["detail"]
    finally:
        link.unlink()


def test_listening_beyond_loopback_needs_a_key(server_env, tmp_path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "imagegen.cli", "serve", "--host", "0.0.0.0", "--data-dir",
                             str(tmp_path)], env={**server_env, "IMAGEGEN_API_KEY": ""}, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "needs an API key (--api-key-file, $IMAGEGEN_API_KEY or --api-key); pass --insecure" in result.stderr


def test_one_server_per_data_folder(server, server_env) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "imagegen.cli", "serve", "--port", "1", "--data-dir",
                             str(server.data_dir)], env=server_env, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 2 and "another imagegen server is using" in result.stderr


def test_images_may_be_uploaded_as_files(server) -> None:
    import io

    start = io.BytesIO()
    Image.effect_mandelbrot((64, 64), (-2, -1.5, 1, 1.5), 40).convert("RGB").save(start, format="PNG")
    options = {"prompt": "a fox", "recipe": "sd15", "width": 64, "height": 64, "num_inference_steps": 2,
               "strength": 0.5, "seed": 3}
    with server.client() as client:
        accepted = client.post("/v1/jobs", data={"options": json.dumps(options)},
                               files={"init_image": ("start.png", start.getvalue(), "image/png")})
        assert accepted.status_code == 202, accepted.text
        job = wait_done(client, accepted.json()["id"])
        assert job["state"] == "done" and "Denoising strength: 0.5" in job["images"][0]["infotext"]
        assert not list((server.data_dir / "inputs").glob("*")), "a finished job's uploads are removed"
        broken = client.post("/v1/jobs", data={"options": "{not json"})
        assert broken.status_code == 422 and "not valid JSON" in broken.json()["detail"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": "a", "negative_prompt": 5}, "negative_prompt: Input should be a valid string"),
        ({"prompt": "a", "loras": [3]}, "loras.0"),
        ({"prompt": "a", "recipe": "sd15", "loras": [{"weight": 1}]}, "loras.0"),
        ({"prompt": "a", "model": 5}, "model: Input should be a valid string"),
        ({"prompt": "x <lora:nope:1>", "recipe": "sd15"}, "not in the server's LoRA folder"),
        ({"prompt": "a", "recipe": "animatediff", "output_format": "frames"}, "cannot serve"),
        ({"prompt": "a", "recipe": "sdxl-controlnet-canny", "controlnet": "/etc"}, "name a hub id"),
    ],
)
def test_wrong_types_and_names_are_4xx_not_500(server, body, message) -> None:
    with server.client() as client:
        response = client.post("/v1/jobs", json=body)
    assert response.status_code in (404, 422), response.text
    assert message in response.json()["detail"]


def test_a_refused_request_leaves_no_uploaded_file(server) -> None:
    import base64
    import io

    png = io.BytesIO()
    Image.new("RGB", (64, 64)).save(png, format="PNG")
    before = set((server.data_dir / "inputs").glob("*")) if (server.data_dir / "inputs").exists() else set()
    with server.client() as client:
        response = client.post("/v1/jobs", json={"prompt": "a", "recipe": "sd15", "width": 64, "height": 64,
                                                 "init_image": base64.b64encode(png.getvalue()).decode(),
                                                 "loras": ["missing"]})
    assert response.status_code == 404
    after = set((server.data_dir / "inputs").glob("*")) if (server.data_dir / "inputs").exists() else set()
    assert after == before


def test_origin_null_and_foreign_hosts_are_refused(server) -> None:
    with server.client() as client:
        assert client.post("/v1/jobs", json={"prompt": "7"}, headers={"Origin": "null"}).status_code == 403
        assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404


def test_recipes_say_whether_their_files_are_on_the_server(server) -> None:
    """"ready": every file the recipe loads in the server's precision is in its cache (the tiny SDXL family is, in
    float32 on this CPU server; the built-in model always is)."""
    with server.client() as client:
        ready = {recipe["name"]: recipe["ready"] for recipe in client.get("/v1/recipes").json()}
    assert ready["digits"] and ready["sdxl-turbo"] and ready["sd15"]
    assert set(ready.values()) == {True, False}
