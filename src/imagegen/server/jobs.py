"""The job queue, kept in SQLite so that an accepted job survives a crash of the server.

A job is a GenerationRequest (JSON) and its state: queued -> running -> done | failed | cancelled; a running job
whose call was interrupted (another job of its batch cancelled, a shutdown) goes back to queued. Jobs found
"running" at start-up were interrupted (kill -9, power loss) and go back to the queue at their place: they run
again with the same resolved seed, so they give the same images.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from imagegen.errors import Cancelled, error_class
from imagegen.prompts.lora_tags import LoraSpec
from imagegen.request import GenerationRequest

log = logging.getLogger("imagegen.server")

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    results TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""
# Columns added after the first release, with their type. Every database gets them at start-up, a new one too, so
# that the table has one history: ALTER TABLE ADD COLUMN keeps an older database's rows, which read NULL.
_ADDED_COLUMNS = {"error_type": "TEXT"}


class QueueFull(Exception):
    """The bounded queue has no room; the client should retry later."""


@dataclass(frozen=True)
class Job:
    id: str
    created: float
    state: str
    request: GenerationRequest
    results: list[dict[str, Any]]  # per image: {"file": name under the images folder, "seed", "infotext"}
    error: str | None
    started: float | None
    finished: float | None
    error_type: str | None  # the class name of the ImagegenError a failed job failed with; None for anything else

    @property
    def failure_status(self) -> int:
        """The HTTP status the synchronous APIs answer for a job that failed or was cancelled: its error class's, so
        that a user's mistake found only when the job ran is a 4xx; 500 for a failure of no known class (a bug, or a
        job recorded before classes were kept)."""
        error = Cancelled if self.state == "cancelled" else error_class(self.error_type)
        return error.http_status if error else 500


def request_to_json(request: GenerationRequest) -> str:
    data = asdict(request)
    data["loras"] = [{"name": lora.name, "weight": lora.weight} for lora in request.loras]
    return json.dumps(data)


def request_from_json(text: str) -> GenerationRequest:
    data = json.loads(text)
    known = {f.name for f in fields(GenerationRequest)}
    data = {key: value for key, value in data.items() if key in known}
    data["loras"] = tuple(LoraSpec(lora["name"], lora["weight"]) for lora in data.get("loras", ()))
    return GenerationRequest(**data)


class JobStore:
    """Thread-safe access to the jobs table; one connection, serialised by a lock (SQLite's own model)."""

    def __init__(self, path: Path, *, max_queue: int = 100) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_queue = path, max_queue
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an accepted job is on disk before the 202 goes out
        self._db.executescript(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        self.changed = threading.Condition(self._lock)

    def requeue_interrupted(self) -> int:
        """Jobs left "running" by a crash go back to the queue (they keep their place: ordered by seq)."""
        with self._lock:
            return self._db.execute("UPDATE jobs SET state='queued', started=NULL WHERE state='running'").rowcount

    def add(self, request: GenerationRequest) -> Job:
        with self._lock:
            queued = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()[0]
            if queued >= self.max_queue:
                raise QueueFull(f"the queue holds {queued} jobs, its limit")
            job_id = uuid.uuid4().hex
            self._db.execute("INSERT INTO jobs (id, created, state, request) VALUES (?, ?, 'queued', ?)",
                             (job_id, time.time(), request_to_json(request)))
            self.changed.notify_all()
        return self.get(job_id)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, *, offset: int = 0, limit: int = 50) -> list[Job]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY seq DESC LIMIT ? OFFSET ?",
                                    (limit, offset)).fetchall()
        return [_job(row) for row in rows]

    def queued(self, limit: int) -> list[Job]:
        """The oldest queued jobs, in queue order.

        A job whose stored request this version cannot read (written by another version of imagegen) fails
        here with the reason, so that it cannot block the queue.
        """
        jobs = []
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state='queued' ORDER BY seq LIMIT ?",
                                    (limit,)).fetchall()
        for row in rows:
            try:
                jobs.append(_job(row))
            except (ValueError, TypeError, KeyError) as error:
                log.warning("job %s has a request this version cannot read: %s", row[0], error)
                self._transition(row[0], "queued", "failed", finished=time.time(),
                                 error=f"the stored request cannot be read by this version of imagegen: {error}")
        return jobs

    def position(self, job_id: str) -> int | None:
        """0 for the next job to run; None unless queued."""
        with self._lock:
            row = self._db.execute("SELECT seq, state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row[1] != "queued":
                return None
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state='queued' AND seq < ?",
                                    (row[0],)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: dict(rows).get(state, 0) for state in STATES}

    def start(self, job_ids: list[str]) -> list[str]:
        """Mark queued jobs running, all with one start time (they run in one call); returns those that started,
        in order: a job cancelled meanwhile does not."""
        started, now = [], time.time()
        with self._lock, self._transaction():
            for job_id in job_ids:
                if self._db.execute("UPDATE jobs SET state='running', started=? WHERE id=? AND state='queued'",
                                    (now, job_id)).rowcount:
                    started.append(job_id)
            self.changed.notify_all()
        return started

    def requeue(self, job_id: str) -> None:
        """A running job whose call was interrupted goes back to the queue, at its place (ordered by seq)."""
        self._transition(job_id, "running", "queued", started=None)

    def finish(self, job_id: str, results: list[dict[str, Any]]) -> None:
        self._transition(job_id, "running", "done", results=json.dumps(results), finished=time.time())

    def fail(self, job_id: str, error: str, error_type: str | None = None) -> None:
        self._transition(job_id, "running", "failed", error=error, error_type=error_type, finished=time.time())

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once; a running one is only marked by the caller's cancel event.

        Returns the job's state after the call, None for an unknown job.
        """
        self._transition(job_id, "queued", "cancelled", finished=time.time())
        job = self.get(job_id)
        return job.state if job else None

    def mark_cancelled(self, job_id: str) -> None:
        self._transition(job_id, "running", "cancelled", finished=time.time())

    def wait_for_work(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Several statements, one commit (one disk sync); the caller holds the lock."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _transition(self, job_id: str, before: str, after: str, **columns: Any) -> bool:
        assignments = ", ".join(f"{name}=?" for name in columns)
        with self._lock:
            changed = self._db.execute(
                f"UPDATE jobs SET state=?{', ' + assignments if assignments else ''} WHERE id=? AND state=?",
                (after, *columns.values(), job_id, before)).rowcount
            self.changed.notify_all()
        return bool(changed)


_COLUMNS = "id, created, state, request, results, error, started, finished, error_type"


def _job(row: tuple) -> Job:
    job_id, created, state, request, results, error, started, finished, error_type = row
    return Job(job_id, created, state, request_from_json(request), json.loads(results), error, started, finished,
               error_type)
