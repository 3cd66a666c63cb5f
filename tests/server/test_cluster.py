"""`imagegen serve --cluster` for real: a local Ray head started by the command, Serve's replicas, a PostgreSQL store
started by the test; two engine replicas on this machine give the single-process server's images, and a replica
killed with -9 loses no job."""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from server.conftest import free_port, new_database, start_server, stop_server
from server.test_queue import wait_done, wait_for

from imagegen.errors import InvalidRequest
from imagegen.server import cluster
from imagegen.server.service import ServerSettings

SLOW_DIGITS = {"recipe": "digits", "prompt": "4", "num_inference_steps": 150, "num_images": 4, "seed": 77}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagegen.cli", "serve", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_cluster_without_its_parts_is_refused_in_one_line(server_env, tmp_path, monkeypatch) -> None:
    data = ("--data-dir", str(tmp_path / "data"))
    no_db = run_cli("--cluster", *data, env={**server_env, "IMAGEGEN_DB": ""})
    assert no_db.returncode == 2 and "--cluster needs a PostgreSQL job store" in no_db.stderr
    unreachable = run_cli("--cluster", "--db", f"postgresql://imagegen@127.0.0.1:{free_port()}/none", *data,
                          env=server_env)
    assert unreachable.returncode == 1 and "cannot connect to the job database" in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1, unreachable.stderr
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "ray" else object())
    with pytest.raises(InvalidRequest, match=r"--cluster needs ray: pip install 'imagegen\[cluster\]'"):
        cluster.check_cluster(ServerSettings(tmp_path, db="postgresql://x/y"), cluster.ClusterOptions())


def test_replicas_that_want_more_than_the_cluster_has_are_refused_before_serve_waits_for_them() -> None:
    options = cluster.ClusterOptions(replicas=2, worker_gpus=1)
    with pytest.raises(InvalidRequest, match=r"2 engine replica\(s\) ask for 2 GPU\(s\); the Ray cluster has 0"):
        cluster.check_resources(options, 1.0, {"CPU": 2.0})
    cluster.check_resources(cluster.ClusterOptions(replicas=2), 0.0, {"CPU": 2.0})


def test_the_printed_serve_config_builds_the_same_application_and_keeps_secrets_out(tmp_path) -> None:
    import yaml

    settings = ServerSettings(tmp_path, api_key="operator-secret", db="postgresql://imagegen:pw@db/jobs")
    text = cluster.serve_config(settings, cluster.ClusterOptions(replicas=3, autoscale=(2, 5)))
    assert "operator-secret" not in text and "pw@" not in text
    [application] = yaml.safe_load(text)["applications"]
    assert application["import_path"] == "imagegen.server.cluster:build_app"
    assert application["args"]["options"]["autoscale"] == [2, 5] and application["args"]["db"] is None


def test_the_autoscaling_policy_follows_the_queue_within_its_bounds() -> None:
    class Context:
        def __init__(self, queued: float, replicas: int) -> None:
            self.aggregated_metrics = {"queued": {"r1": queued, "r2": queued}}
            self.current_num_replicas = replicas
            self.capacity_adjusted_min_replicas, self.capacity_adjusted_max_replicas = 1, 4

    assert [cluster.queue_depth_policy(Context(queued, 2))[0] for queued in (0, 3, 9, 40)] == [1, 1, 3, 4]


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def generate(client: httpx.Client, seed: int) -> np.ndarray:
    response = client.post("/v1/images/generations", json={"model": "digits", "prompt": str(seed % 10),
                                                            "seed": seed})
    assert response.status_code == 200, response.text
    return png_pixels(base64.b64decode(response.json()["data"][0]["b64_json"]))


def engine_pids() -> set[int]:
    found = subprocess.run(["pgrep", "-f", "ServeReplica:imagegen:engine"], capture_output=True, text=True)
    return {int(pid) for pid in found.stdout.split()}


@pytest.mark.slow
def test_two_replicas_give_the_single_servers_images_and_a_replica_killed_mid_job_loses_nothing(
        server_env, postgres, tmp_path) -> None:
    single = start_server(tmp_path / "single", server_env, api_key=None)
    try:
        with httpx.Client(base_url=single.url, timeout=120) as client:
            expected = [generate(client, seed) for seed in range(16)]
            slow = client.post("/v1/jobs", json=SLOW_DIGITS).json()["id"]
            expected_slow = [png_pixels(client.get(image["url"]).content) for image in wait_done(client, slow)["images"]]
    finally:
        stop_server(single)
    port = free_port()
    ray_temp = tempfile.mkdtemp(prefix="igray-")  # short: Ray's socket paths must fit in 107 bytes
    env = {**server_env, "IMAGEGEN_LEASE_S": "3", "IMAGEGEN_RAY_TEMP": ray_temp}
    log = (tmp_path / "cluster.log").open("w")
    database = new_database(postgres)
    process = subprocess.Popen([sys.executable, "-m", "imagegen.cli", "serve", "--cluster", "--replicas", "2",
                                "--db", database, "--port", str(port), "--data-dir",
                                str(tmp_path / "data"), "--device", "cpu"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.monotonic() + 120
            while not (len(engine_pids()) == 2 and ready(client)):
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "cluster.log").read_text()
                time.sleep(0.5)
            with ThreadPoolExecutor(16) as pool:
                served = list(pool.map(lambda seed: generate(client, seed), range(16)))
            assert all(np.array_equal(got, want) for got, want in zip(served, expected))
            jobs = client.get("/v1/jobs", params={"limit": 16}).json()["jobs"]
            assert len(jobs) == 16 and all(job["state"] == "done" for job in jobs)

            before = engine_pids()
            job_id = client.post("/v1/jobs", json=SLOW_DIGITS).json()["id"]
            running = wait_for(client, job_id, lambda job: job["state"] == "running" and job["progress"]["done"] > 0)
            victim = worker_pid(database, job_id)
            assert victim in before
            os.kill(victim, signal.SIGKILL)
            done = wait_done(client, job_id)
            assert done["state"] == "done" and running["started"] < done["started"]  # it ran again, from its start
            assert all(np.array_equal(png_pixels(client.get(image["url"]).content), want)
                       for image, want in zip(done["images"], expected_slow, strict=True))
            assert sorted(path.name for path in (tmp_path / "data" / "images").glob(f"{job_id}-*")) == \
                [f"{job_id}-{index}.png" for index in range(4)]
            deadline = time.monotonic() + 60
            while len(engine_pids()) < 2 and time.monotonic() < deadline:  # Serve replaced the killed replica
                time.sleep(0.5)
            assert len(engine_pids()) == 2 and victim not in engine_pids()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
    leftovers = subprocess.run(["pgrep", "-af", ray_temp], capture_output=True, text=True).stdout
    shutil.rmtree(ray_temp, ignore_errors=True)
    assert not leftovers.strip(), f"Ray processes left running: {leftovers}"


def ready(client: httpx.Client) -> bool:
    try:
        return client.get("/ready").status_code == 200
    except httpx.HTTPError:
        return False


def worker_pid(database: str, job_id: str) -> int:
    """The process id in the name of the worker that holds the job (HOST-PID-TAG)."""
    import psycopg

    with psycopg.connect(database) as connection:
        [worker] = connection.execute("SELECT worker FROM jobs WHERE id=%s", (job_id,)).fetchone()
    return int(worker.rsplit("-", 2)[1])
