"""What `imagegen serve` tells its operator: where it serves, its data, its recipes, its key, and one line per job."""

from __future__ import annotations

import re
import time

import pytest
from server.conftest import start_server, stop_server

from imagegen.engine import Engine, EngineOptions
from imagegen.errors import InvalidRequest
from imagegen.server.main import startup_lines
from imagegen.server.service import ServerSettings
from imagegen.version import __version__


def test_the_server_says_what_it_serves_and_logs_one_line_per_job(server_env, tmp_path) -> None:
    server = start_server(tmp_path / "data", server_env, "--warm", "digits:all")
    try:
        with server.client() as client:
            job_id = client.post("/v1/jobs", json={"prompt": "7", "recipe": "digits", "num_images": 2}).json()["id"]
            while client.get(f"/v1/jobs/{job_id}").json()["state"] not in ("done", "failed"):
                time.sleep(0.1)
    finally:
        stop_server(server)
    lines = server.output().splitlines()
    assert lines[0] == f"imagegen {__version__} serving {server.url}/ (web page; APIs under /v1 and /sdapi/v1)"
    assert lines[1] == f"data folder: {(tmp_path / 'data').resolve()}"
    assert lines[2].startswith("recipes ready on this machine: digits, ") and "sdxl-turbo" in lines[2]
    assert "HF_HUB_OFFLINE is set" in lines[2]  # the tiny cache lacks some recipes' models
    assert lines[3].startswith("API key: required")
    done = [line for line in lines if line.startswith(f"job {job_id} ")]
    assert len(done) == 1 and re.fullmatch(rf"job {job_id} done: digits, 2 images in \d+\.\d s", done[0]), lines
    # --warm made its image before /ready (digits: no fast method applies, so "all" is noted and left out)
    warmed = [index for index, line in enumerate(lines) if re.fullmatch(r"warmed digits in \d+\.\d s", line)]
    assert warmed and warmed[0] < lines.index(done[0]), lines


def test_warming_names_a_recipe_it_can_run_without_inputs() -> None:
    from imagegen.server.service import warm_requests

    [turbo, dit] = warm_requests(("sdxl-turbo:tiny-vae,compile", "dit"))
    assert (turbo.recipe, turbo.fast, turbo.num_inference_steps) == ("sdxl-turbo", "tiny-vae,compile", 1)
    assert dit.prompt == "0" and dit.fast is None  # a class id for the class-conditional recipes
    with pytest.raises(InvalidRequest, match="--warm svd: recipe svd needs an input image; its first job warms it"):
        warm_requests(("svd",))
    with pytest.raises(InvalidRequest, match="unknown fast method 'turbo'"):
        warm_requests(("sdxl-turbo:turbo",))
    with pytest.raises(InvalidRequest, match="unknown recipe"):
        warm_requests(("sdxl-trubo",))


def test_a_server_beyond_loopback_warns_of_what_its_address_exposes(tmp_path) -> None:
    engine = Engine(EngineOptions(device="cpu"))
    open_lines = startup_lines(ServerSettings(tmp_path, host="0.0.0.0", insecure=True), engine)
    assert open_lines[-2].startswith("API key: none")
    assert open_lines[-1].startswith("warning: listening on 0.0.0.0 without an API key (--insecure): anyone")
    keyed = startup_lines(ServerSettings(tmp_path, host="::", api_key="k"), engine)
    assert keyed[0].startswith("imagegen ") and "http://[::]:7860/" in keyed[0]
    assert keyed[-1].startswith("warning: listening on :: over plain HTTP")
    assert not startup_lines(ServerSettings(tmp_path, api_key="k"), engine)[-1].startswith("warning")
