"""The job table: a failed job keeps its error's class, by which every API answers with that class's status."""

from __future__ import annotations

import sqlite3
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
from imagegen.server.jobs import JobStore, QueueFull

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
def test_a_failed_job_answers_its_error_classes_status(tmp_path, error_type, status) -> None:
    job = failed_job(JobStore(tmp_path / "jobs.sqlite3"), error_type)
    assert (job.state, job.error_type, job.failure_status) == ("failed", error_type, status)


def test_a_cancelled_job_is_a_conflict(tmp_path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.add(REQUEST)
    assert store.cancel(job.id) == "cancelled" and store.get(job.id).failure_status == Cancelled.http_status == 409


def test_a_database_of_the_first_release_gains_the_error_type_and_keeps_its_jobs(tmp_path) -> None:
    path = tmp_path / "jobs.sqlite3"
    old = JobStore(path)
    kept = failed_job(old, None)
    old._db.execute("ALTER TABLE jobs DROP COLUMN error_type")  # as the first release wrote it
    assert "error_type" not in {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(jobs)")}
    store = JobStore(path)
    assert store.get(kept.id).error == "it failed" and store.get(kept.id).error_type is None
    assert failed_job(store, "ModelNotFound").failure_status == 404


def test_error_classes_are_found_by_name_at_any_depth() -> None:
    assert [error_class(name) for name in ("ImagegenError", "InvalidRequest", "ModelNotFound", "InvalidOutput")] == [
        ImagegenError, InvalidRequest, ModelNotFound, InvalidOutput]
    assert error_class("ValueError") is None and error_class(None) is None
    assert all(400 <= cls.http_status < 600 for cls in (ImagegenError, *ImagegenError.__subclasses__()))


def test_an_idempotency_key_gives_its_first_job_again_across_restarts(tmp_path) -> None:
    request = GenerationRequest(prompt="7", recipe="digits", seed=1)
    store = JobStore(tmp_path / "jobs.sqlite3", max_queue=1)
    first = store.add(request, idempotency_key="client-42")
    again = store.add(replace(request, seed=2), idempotency_key="client-42")  # the first request made decides
    reopened = JobStore(tmp_path / "jobs.sqlite3", max_queue=1).add(request, idempotency_key="client-42")
    assert first.id == again.id == reopened.id and again.request.seed == 1
    assert [job.id for job in store.list()] == [first.id]  # one job; and a full queue refuses only a new one
    with pytest.raises(QueueFull):
        store.add(request, idempotency_key="client-43")
