"""What only a shared PostgreSQL store does: several workers on one queue, leases that bring a dead worker's jobs
back, a cancel and progress that cross processes through NOTIFY, and a database restarted under load. (The rest of
the store's and the worker's tests run against both backends: the `make_store` fixture.)"""

from __future__ import annotations

import threading
import time

import pytest
from postgres_server import PostgresServer
from server.test_queue import ScriptedEngine, outcomes

from imagegen.errors import StoreUnavailable
from imagegen.request import GenerationRequest
from imagegen.server.metrics import Metrics
from imagegen.server.store import open_store
from imagegen.server.store import sql as store_sql
from imagegen.server.worker import Worker


def jobs(store, count: int, **request: object) -> list[str]:  # noqa: ANN001 - a JobStore
    return [store.add(GenerationRequest(prompt=f"p{seed}", recipe="digits", seed=seed, **request)).id
            for seed in range(count)]


def worker(url: str, images, name: str, engine: ScriptedEngine | None = None, **options: object) -> Worker:  # noqa: ANN001
    images.mkdir(exist_ok=True)
    started = Worker(engine or ScriptedEngine(), open_store(url, images.parent), images, Metrics(), idle_wait=0.05,
                     worker_id=name, **options)
    started.start()
    return started


def stop(running: Worker) -> None:
    running.shutdown(grace=0)
    running.store.close()


def test_two_workers_share_one_queue_and_run_every_job_once(database_url, tmp_path) -> None:
    api = open_store(database_url, tmp_path)
    ids = jobs(api, 16)
    engines = [ScriptedEngine(step_s=0.02), ScriptedEngine(step_s=0.02)]
    workers = [worker(database_url, tmp_path / "images", f"w{index}", engine) for index, engine in enumerate(engines)]
    try:
        assert [state for state, _ in outcomes(api, timeout=30)] == ["done"] * 16
    finally:
        for each in workers:
            stop(each)
    ran = [prompt for engine in engines for call in engine.calls for prompt in call]
    assert sorted(ran) == sorted(f"p{seed}" for seed in range(16))  # each job once, none twice
    assert all(engine.calls for engine in engines), "both workers took jobs"
    assert {api.get(job_id).results[0]["file"] for job_id in ids} == {f"{job_id}-0.txt" for job_id in ids}
    api.close()


def test_a_dead_workers_jobs_come_back_when_its_lease_ends_and_its_late_outcome_counts_for_nothing(
        database_url, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(store_sql, "LEASE_S", 0.5)
    api = open_store(database_url, tmp_path)
    [job_id] = jobs(api, 1)
    ghost = open_store(database_url, tmp_path)
    assert [job.id for job in ghost.claim(lambda waiting: waiting[:1], window=1, worker="ghost")] == [job_id]
    time.sleep(0.6)  # the ghost never renews: it died
    alive = worker(database_url, tmp_path / "images", "alive")
    try:
        assert outcomes(api) == [("done", None)]
    finally:
        stop(alive)
    assert not ghost.finish(job_id, [{"file": "ghost.png", "seed": 0, "infotext": ""}], "ghost")
    assert api.get(job_id).results[0]["file"] == f"{job_id}-0.txt"
    api.close()
    ghost.close()


def test_a_cancel_and_the_progress_cross_processes(database_url, tmp_path) -> None:
    api = open_store(database_url, tmp_path)  # as the API of a cluster: no worker of its own
    progressed = threading.Event()
    api.on_progress = lambda job_id: progressed.set()
    engine = ScriptedEngine(steps=10_000, step_s=0.01)
    [job_id] = jobs(api, 1)
    running = worker(database_url, tmp_path / "images", "w0", engine)
    try:
        assert progressed.wait(10), "the worker's steps reached the API through NOTIFY"
        done, total, cancelled, _, _ = api.live(job_id)
        assert 0 < done < total == 10_000 and not cancelled
        assert api.cancel(job_id) == "running"
        assert outcomes(api) == [("cancelled", None)]
    finally:
        stop(running)
        api.close()


@pytest.mark.slow
def test_workers_and_the_api_reconnect_after_the_database_restarts(tmp_path) -> None:
    database = PostgresServer()
    database.start()
    try:
        api = open_store(database.url, tmp_path)
        jobs(api, 3)
        running = worker(database.url, tmp_path / "images", "w0", ScriptedEngine(steps=30, step_s=0.02), max_batch=1)
        time.sleep(0.3)
        database.stop("immediate")  # as a crash: connections drop mid-transaction
        with pytest.raises(StoreUnavailable, match="cannot be reached|cannot connect"):
            api.add(GenerationRequest(prompt="lost", recipe="digits", seed=9))
        time.sleep(1)
        database.start()
        jobs(api, 1)  # the API's next request reconnects
        try:
            assert [state for state, _ in outcomes(api, timeout=60)] == ["done"] * 4
        finally:
            stop(running)
            api.close()
    finally:
        database.stop()
        database.remove()
