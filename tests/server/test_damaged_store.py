"""A damaged job database: a one-line error naming the file and the way out, and `--repair` rebuilding the finished
jobs from the result files; a clean shutdown leaves the database file whole on its own."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from server.test_queue import submit, wait_done

from imagegen.request import GenerationRequest
from imagegen.server.store.sqlite import SQLiteJobStore


def test_a_damaged_store_is_named_and_repair_rebuilds_the_finished_jobs(serve, server_env, tmp_path) -> None:
    data = tmp_path / "data"
    server = serve(data)
    with server.client() as client:
        done = wait_done(client, submit(client, prompt="7", recipe="digits", seed=5, num_images=2))
    server.process.terminate()
    server.process.wait(timeout=60)
    (data / "jobs.sqlite3").write_bytes(b"\0garbage" * 1000)  # as a disk error or a stray copy leaves it
    command = [sys.executable, "-m", "imagegen.cli", "serve", "--data-dir", str(data), "--device", "cpu"]
    refused = subprocess.run(command, env=server_env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 5
    assert refused.stderr.strip().splitlines()[-1] == (
        f"imagegen: error: the job store {data / 'jobs.sqlite3'} is damaged (file is not a database); "
        "`imagegen serve --repair` moves it aside and rebuilds the finished jobs from the images' embedded "
        "parameters")
    repaired = serve(data, "--repair")
    with repaired.client() as client:
        [job] = client.get("/v1/jobs").json()["jobs"]
    assert job["id"] == done["id"] and job["state"] == "done"
    assert [image["seed"] for image in job["images"]] == [5, 6] and job["prompt"] == "7"
    assert "restored" in repaired.output() and list(data.glob("jobs.sqlite3.damaged-*"))


def test_a_clean_shutdown_folds_the_log_into_the_database_file(tmp_path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    job = store.add(GenerationRequest(prompt="7", recipe="digits", seed=1))
    store.close()
    assert not (tmp_path / "jobs.sqlite3-wal").exists() or (tmp_path / "jobs.sqlite3-wal").stat().st_size == 0
    copy = tmp_path / "backup.sqlite3"
    copy.write_bytes((tmp_path / "jobs.sqlite3").read_bytes())  # the database file alone
    with sqlite3.connect(copy) as db:
        assert db.execute("SELECT id FROM jobs").fetchall() == [(job.id,)]
