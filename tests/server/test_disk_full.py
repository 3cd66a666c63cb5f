"""A full disk: submissions answer 507 with Retry-After in each API's shape, /ready says why, no job is left
"running", and everything goes on once there is room again (the server under RLIMIT_FSIZE, lifted with prlimit)."""

from __future__ import annotations

import resource
import time

from server.test_queue import wait_done

LIMIT_BYTES = 256 * 1024  # room to start and to take a few jobs, then the write-ahead log fills it


def test_a_full_disk_answers_507_says_not_ready_and_recovers(serve, tmp_path) -> None:
    server = serve(tmp_path / "data", max_file_bytes=LIMIT_BYTES)
    accepted = []
    with server.client() as client:
        for seed in range(400):
            response = client.post("/v1/jobs", json={"prompt": "7", "recipe": "digits", "seed": seed,
                                                     "num_inference_steps": 1})
            if response.status_code != 202:
                break
            accepted.append(response.json()["id"])
        assert response.status_code == 507, response.text
        assert "disk is full or cannot be written" in response.json()["detail"]
        assert int(response.headers["Retry-After"]) > 0
        openai = client.post("/v1/images/generations", json={"model": "digits", "prompt": "7"})
        assert openai.status_code == 507 and openai.json()["error"]["message"].startswith("the server's disk")
        assert "Retry-After" in openai.headers
        not_ready = client.get("/ready")
        assert not_ready.status_code == 503 and "cannot be written" in not_ready.json()["reason"]
        assert client.get("/health").status_code == 200

        resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # room again (raising the soft limit)
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.2)
        states = {wait_done(client, job_id)["state"] for job_id in accepted}
        assert states <= {"done", "failed"} and "done" in states  # none left running or queued
        assert client.post("/v1/jobs", json={"prompt": "7", "recipe": "digits"}).status_code == 202
