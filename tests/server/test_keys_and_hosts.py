"""The keys from a file (out of `ps`): the operator's and each user's, who sees only their own jobs; client-chosen
job ids; and the host names a keyless server answers to (`--allowed-hosts`)."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest
from server.conftest import start_server, stop_server
from server.test_queue import wait_done

from imagegen.errors import InvalidRequest
from imagegen.server.keys import read_key_file


def test_the_key_may_come_from_a_file(server_env, tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("file-key-0123456789\n")
    server = start_server(tmp_path / "data", {**server_env, "IMAGEGEN_API_KEY": ""}, "--api-key-file",
                          str(key_file), api_key=None)
    try:
        assert httpx.get(f"{server.url}/v1/recipes").status_code == 401
        keyed = httpx.get(f"{server.url}/v1/recipes", headers={"Authorization": "Bearer file-key-0123456789"})
        assert keyed.status_code == 200
        assert "file-key" not in " ".join(server.process.args)  # nothing in the process's command line
    finally:
        stop_server(server)
    (tmp_path / "empty").write_text("\n")
    refused = subprocess.run([sys.executable, "-m", "imagegen.cli", "serve", "--data-dir", str(tmp_path / "other"),
                              "--api-key-file", str(tmp_path / "empty")], env=server_env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and f"--api-key-file {tmp_path / 'empty'} is empty" in refused.stderr


def test_a_keyless_server_answers_the_names_it_is_given(server_env, tmp_path) -> None:
    server = start_server(tmp_path / "data", server_env, "--allowed-hosts", "render.lan", api_key=None)
    try:
        port = server.url.rsplit(":", 1)[1]
        named = httpx.get(f"{server.url}/v1/recipes", headers={"Host": f"render.lan:{port}"})
        other = httpx.get(f"{server.url}/v1/recipes", headers={"Host": f"attacker.example:{port}"})
    finally:
        stop_server(server)
    assert named.status_code == 200
    assert other.status_code == 403 and "is not this server's name" in other.json()["detail"]


KEYS = {"operator": "operator-key-0123456789", "alice": "alice-key-0123456789", "bob": "bob-key-0123456789"}


def test_each_user_key_sees_and_cancels_only_its_own_jobs_and_the_operator_sees_all(server_env, tmp_path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"# the team's keys\n{KEYS['operator']}\nalice:{KEYS['alice']}\n\nbob:{KEYS['bob']}\n")
    server = start_server(tmp_path / "data", {**server_env, "IMAGEGEN_API_KEY": ""}, "--api-key-file",
                          str(key_file), api_key=None)
    try:
        alice, bob, operator = (httpx.Client(base_url=server.url, timeout=60, headers={
            "Authorization": f"Bearer {KEYS[name]}"}) for name in ("alice", "bob", "operator"))
        job = {"recipe": "digits", "prompt": "7", "num_inference_steps": 2}
        chosen = alice.post("/v1/jobs", json=job, headers={"Imagegen-Job-Id": "alice-1"})
        again = alice.post("/v1/jobs", json={**job, "seed": 5}, headers={"Imagegen-Job-Id": "alice-1"})
        assert chosen.status_code == again.status_code == 202 and chosen.json()["id"] == again.json()["id"] == "alice-1"
        taken = bob.post("/v1/jobs", json=job, headers={"Imagegen-Job-Id": "alice-1"})
        assert taken.status_code == 409 and "is taken" in taken.json()["detail"]
        alices, bobs = (client.post("/v1/jobs", json=job, headers={"Idempotency-Key": "same-key"}).json()["id"]
                        for client in (alice, bob))
        assert alices != bobs  # a key is its owner's
        done = wait_done(alice, "alice-1")
        image = done["images"][0]["url"]
        assert alice.get(image).status_code == 200
        for method, path in (("GET", "/v1/jobs/alice-1"), ("DELETE", "/v1/jobs/alice-1"),
                             ("GET", "/v1/jobs/alice-1/events"), ("GET", image)):
            assert bob.request(method, path).status_code == 404, (method, path)
        assert {entry["id"] for entry in bob.get("/v1/jobs").json()["jobs"]} == {bobs}
        assert {entry["id"] for entry in alice.get("/v1/jobs").json()["jobs"]} == {"alice-1", alices}
        assert {entry["id"] for entry in operator.get("/v1/jobs").json()["jobs"]} == {"alice-1", alices, bobs}
        assert operator.get(image).status_code == 200
        openai = bob.post("/v1/images/generations", json={"model": "digits", "prompt": "3"},
                          headers={"Imagegen-Job-Id": "bob-openai"})
        assert openai.status_code == 200 and openai.headers["X-Imagegen-Job"] == "bob-openai"
        a1111 = alice.post("/sdapi/v1/txt2img", json={"prompt": "3", "steps": 2, "force_task_id": "task(a1)",
                                                      "override_settings": {"sd_model_checkpoint": "digits"}})
        assert a1111.status_code == 200, a1111.text
        assert alice.get("/v1/jobs/task(a1)").json()["state"] == "done"
        assert bob.get("/v1/jobs/task(a1)").status_code == 404 and bob.get("/v1/jobs/bob-openai").status_code == 200
        bad = alice.post("/v1/jobs", json=job, headers={"Imagegen-Job-Id": "../escape"})
        assert bad.status_code == 422 and "chosen job id" in bad.json()["detail"]
    finally:
        stop_server(server)


@pytest.mark.parametrize(("text", "message"), [
    ("one-key\nanother-key\n", "line 2: a second bare key"),
    ("al ice:key-0123\n", "line 1: write NAME:KEY"),
    ("alice:same-key\nbob:same-key\n", "each key and each user name may appear once"),
    ("# only a comment\n\n", "is empty"),
])
def test_a_key_file_with_a_mistake_is_refused_with_its_line(tmp_path, text, message) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        read_key_file(path)
