"""The job table: a failed job keeps its error's class, by which every API answers with that class's status."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace

import pytest

from imagegen.errors import (
    Cancelled,
    ImagegenError,
    InvalidOutput,
    InvalidRequest,
    ModelNotFound,
    error_class,
)
from imagegen.request import GenerationRequest
from imagegen.server.store import JobStore, QueueFull
from imagegen.server.store.sqlite import SQLiteJobStore

REQUEST = GenerationRequest(prompt="7", recipe="digits")


def failed_job(store: JobStore, error_type: str | None):  # noqa: ANN201 - a Job
    job = store.add(REQUEST)
    store.start([job.id])
    store.fail(job.id, "it failed", error_type)
    return store.get(job.id)


@pytest.mark.parametrize(("error_type", "status"), [
    ("InvalidRequest", 422), ("ModelNotFound", 404), ("UnsafeWeights", 403), ("InvalidOutput", 500),
    (None, 500),  # not an ImagegenError: a bug
    ("NoSuchError", 500),  # a class this version does not know
])
def test_a_failed_job_answers_its_error_classes_status(make_store, error_type, status) -> None:
    job = failed_job(make_store(), error_type)
    assert (job.state, job.error_type, job.failure_status) == ("failed", error_type, status)


def test_a_cancelled_job_is_a_conflict(make_store) -> None:
    store = make_store()
    job = store.add(REQUEST)
    assert store.cancel(job.id) == "cancelled" and store.get(job.id).failure_status == Cancelled.http_status == 409


def test_a_database_of_the_first_release_gains_the_error_type_and_keeps_its_jobs(tmp_path) -> None:
    path = tmp_path / "jobs.sqlite3"
    old = SQLiteJobStore(path)
    kept = failed_job(old, None)
    old._db.execute("ALTER TABLE jobs DROP COLUMN error_type")  # as the first release wrote it
    assert "error_type" not in {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(jobs)")}
    store = SQLiteJobStore(path)
    assert store.get(kept.id).error == "it failed" and store.get(kept.id).error_type is None
    assert failed_job(store, "ModelNotFound").failure_status == 404


def test_error_classes_are_found_by_name_at_any_depth() -> None:
    assert [error_class(name) for name in ("ImagegenError", "InvalidRequest", "ModelNotFound", "InvalidOutput")] == [
        ImagegenError, InvalidRequest, ModelNotFound, InvalidOutput]
    assert error_class("ValueError") is None and error_class(None) is None
    assert all(400 <= cls.http_status < 600 for cls in (ImagegenError, *ImagegenError.__subclasses__()))


def test_an_idempotency_key_gives_its_first_job_again_across_restarts(make_store) -> None:
    request = GenerationRequest(prompt="7", recipe="digits", seed=1)
    store = make_store(max_queue=1)
    first = store.add(request, idempotency_key="client-42")
    again = store.add(replace(request, seed=2), idempotency_key="client-42")  # the first request made decides
    reopened = make_store(max_queue=1).add(request, idempotency_key="client-42")
    assert first.id == again.id == reopened.id and again.request.seed == 1
    assert [job.id for job in store.list()] == [first.id]  # one job; and a full queue refuses only a new one
    with pytest.raises(QueueFull):
        store.add(request, idempotency_key="client-43")


def test_jobs_added_at_once_share_commits_and_each_gets_its_own_outcome(make_store) -> None:
    """64 threads add at once: the grouped commits store every job once, in one queue order, and the bound is
    exact within a group (the jobs past it get QueueFull, the others are stored); a repeated key is one job."""
    store = make_store(max_queue=50)
    outcomes: list = [None] * 64
    start = threading.Barrier(64)

    def add(index: int) -> None:
        start.wait()
        try:
            outcomes[index] = store.add(replace(REQUEST, seed=index), idempotency_key=f"key-{index % 60}")
        except QueueFull as error:
            outcomes[index] = error

    threads = [threading.Thread(target=add, args=(index,)) for index in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    jobs = [outcome for outcome in outcomes if not isinstance(outcome, QueueFull)]
    stored = store.list(limit=100)
    assert len(stored) == 50 == len({job.id for job in jobs}) and store.counts()["queued"] == 50
    assert sum(isinstance(outcome, QueueFull) for outcome in outcomes) == 64 - len(jobs)
    by_key = {}
    for index, outcome in enumerate(outcomes):
        if not isinstance(outcome, QueueFull):
            assert by_key.setdefault(index % 60, outcome.id) == outcome.id  # the same key, the same job
            assert store.get(outcome.id).request.seed == outcome.request.seed
