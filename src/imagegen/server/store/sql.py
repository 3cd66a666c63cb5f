"""The job store's operations, written once in SQL that SQLite and PostgreSQL both take ("?" placeholders; the
PostgreSQL backend turns them into its own). A backend supplies the connection, its transactions and how a change
reaches other processes.

A job is a GenerationRequest (JSON) and its state: queued -> running -> done | failed | cancelled. A worker claims
queued jobs (marks them running under its name, with a lease it renews while they run); a job whose call was
interrupted (another job of its batch cancelled, a shutdown), or whose worker's lease expired (the worker died), goes
back to the queue at its place and runs again with the same resolved seed, so it gives the same images. A worker's
outcome for a job counts only while the job is still its own: a worker presumed dead records nothing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any

from imagegen.request import GenerationRequest
from imagegen.server.changes import ANY_JOB
from imagegen.server.store.records import (
    COLUMNS,
    DELIVERY_COLUMNS,
    FINISHED,
    STATES,
    Delivery,
    Job,
    JobIdTaken,
    QueueFull,
    job_from_row,
    request_to_json,
)
from imagegen.server.webhooks import Webhook, payload

log = logging.getLogger("imagegen.server")
LOCAL_WORKER = "local"  # the single-process server's one worker
# A claim lasts this long unless its worker renews it (every LEASE_S / 3): how long a dead worker's jobs wait
# before another runs them.
LEASE_S = float(os.environ.get("IMAGEGEN_LEASE_S") or 30)
PROBE_BYTES = 64 * 1024  # several times a stored job with its results


@dataclass
class _Addition:
    """A job to add, and once committed its outcome: the Job, or the error its caller raises."""

    request: GenerationRequest
    idempotency_key: str | None
    webhook: Webhook | None
    owner: str | None
    job_id: str | None
    outcome: Job | Exception | None = None


class JobStore:
    """Thread-safe access to the jobs; one connection, serialised by a lock."""

    skip_locked = ""  # what a claim's SELECT adds so that workers never wait for each other's rows
    shared = False  # True: workers in other processes share the store, and a claim's lease may expire
    # Wake-ups, any thread may be told: a job changed (ANY_JOB: the queue moved), a running job made progress,
    # a running job was asked to stop (its worker may be in another process).
    on_change: Callable[[str], None]
    on_progress: Callable[[str], None]
    on_cancel: Callable[[str], None]

    def __init__(self, *, max_queue: int = 100, on_change: Callable[[str], None] = lambda job_id: None) -> None:
        self.max_queue = max_queue
        self.on_change = on_change
        self.on_progress = lambda job_id: None
        self.on_cancel = lambda job_id: None
        self.writable = True  # False since a write failed for want of space, until one succeeds
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)  # a worker waiting for work is woken by this
        self._additions: list[_Addition] = []  # jobs waiting for the next grouped commit (add)
        self._additions_lock = threading.Lock()
        self._next_expiry_check = 0.0  # time.monotonic() when a claim next looks for expired leases

    # What a backend supplies.

    def _execute(self, sql: str, parameters: tuple = ()) -> Any:
        """A cursor for one statement; the caller holds the lock."""
        raise NotImplementedError

    def _transaction(self, *, synced: bool = True) -> AbstractContextManager[None]:
        """Several statements, one commit (a disk sync unless not `synced`: a power loss may then lose it, which is
        harmless where used); the caller holds the lock. A full disk is StorageFull, a lost server
        StoreUnavailable."""
        raise NotImplementedError

    def _publish(self, kind: str, job_id: str) -> None:
        """Tell other processes, once the running transaction commits: kind is change, progress or cancel."""

    def close(self) -> None:
        raise NotImplementedError

    # Adding jobs.

    def add(self, request: GenerationRequest, *, idempotency_key: str | None = None, webhook: Webhook | None = None,
            owner: str | None = None, job_id: str | None = None) -> Job:
        """Queue the request, made by `owner`, as job `job_id` (None: a new id). Under an idempotency key the owner
        used already, or a job id of the owner's that exists, the job made then instead: a client's retry after a
        lost answer makes no second job, across restarts (as Stripe's Idempotency-Key, the first request made with a
        key decides its job). Raises JobIdTaken for a job id of another owner's job.

        Commits are grouped: the first caller to get the store commits every job added meanwhile, in one
        transaction (one disk sync); each caller returns once its own job is on disk."""
        addition = _Addition(request, idempotency_key, webhook, owner, job_id)
        with self._additions_lock:
            self._additions.append(addition)
        with self._lock:
            if addition.outcome is None:  # no other caller committed it meanwhile
                self._commit_additions()
        if isinstance(addition.outcome, Exception):
            raise addition.outcome
        return addition.outcome

    def _commit_additions(self) -> None:
        """Store every pending addition in one transaction; the caller holds the lock."""
        with self._additions_lock:
            additions, self._additions = self._additions, []
        try:
            with self._transaction():
                queued = self._execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()[0]
                for addition in additions:
                    addition.outcome, added = self._insert(addition, queued)
                    queued += added
                self._publish("change", ANY_JOB)
        except Exception as error:  # nothing of the group was stored  # noqa: BLE001 - each caller raises it
            for addition in additions:
                addition.outcome = error
            return
        self.changed.notify_all()

    def _insert(self, addition: _Addition, queued: int) -> tuple[Job | Exception, bool]:
        """The addition's job (the one its idempotency key or job id made before, or a new one, and whether it is
        new); QueueFull if it has no room, JobIdTaken if its job id is another owner's."""
        key, owner = addition.idempotency_key, addition.owner
        known = self._execute(f"SELECT {COLUMNS} FROM jobs WHERE COALESCE(owner, '')=? AND idempotency_key=?",
                              (owner or "", key)).fetchone() if key is not None else None
        if known is None and addition.job_id is not None:
            known = self._execute(f"SELECT {COLUMNS} FROM jobs WHERE id=?", (addition.job_id,)).fetchone()
            if known is not None and job_from_row(known).owner != owner:
                return JobIdTaken(f"job id {addition.job_id!r} is taken; choose another"), False
        if known is not None:
            return job_from_row(known), False
        if queued >= self.max_queue:
            return QueueFull(f"the queue holds {queued} jobs, its limit"), False
        job = Job(addition.job_id or uuid.uuid4().hex, time.time(), "queued", addition.request, [], None, None, None,
                  None, addition.webhook, owner)
        self._execute("INSERT INTO jobs (id, created, state, request, idempotency_key, webhook, owner) "
                      "VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                      (job.id, job.created, request_to_json(job.request), key,
                       json.dumps(asdict(job.webhook)) if job.webhook else None, owner))
        return job, True

    # Reading.

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._execute(f"SELECT {COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return job_from_row(row) if row else None

    def list(self, *, offset: int = 0, limit: int = 50, owner: str | None = None) -> list[Job]:
        """Newest first: every job, or (with `owner`) that user's."""
        where, values = ("WHERE owner=?", (owner,)) if owner is not None else ("", ())
        with self._lock:
            rows = self._execute(f"SELECT {COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                                 (*values, limit, offset)).fetchall()
        return [job_from_row(row) for row in rows]

    def queued(self, limit: int) -> list[Job]:
        """The oldest queued jobs, in queue order (see _readable)."""
        with self._lock:
            rows = self._execute(f"SELECT {COLUMNS} FROM jobs WHERE state='queued' ORDER BY seq LIMIT ?",
                                 (limit,)).fetchall()
        return self._readable(rows)

    def _readable(self, rows: list[tuple]) -> list[Job]:
        """The rows as jobs. A job whose stored request this version cannot read (written by another version of
        imagegen) fails here with the reason, so that it cannot block the queue."""
        jobs = []
        for row in rows:
            try:
                jobs.append(job_from_row(row))
            except (ValueError, TypeError, KeyError) as error:
                log.warning("job %s has a request this version cannot read: %s", row[0], error)
                self._transition(row[0], "queued", "failed", finished=time.time(),
                                 error=f"the stored request cannot be read by this version of imagegen: {error}")
        return jobs

    def position(self, job_id: str) -> int | None:
        """0 for the next job to run; None unless queued."""
        with self._lock:
            row = self._execute("SELECT seq, state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row[1] != "queued":
                return None
            return self._execute("SELECT COUNT(*) FROM jobs WHERE state='queued' AND seq < ?",
                                 (row[0],)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: dict(rows).get(state, 0) for state in STATES}

    # A worker's side.

    def claim(self, choose: Callable[[list[Job]], list[Job]], *, window: int,
              worker: str = LOCAL_WORKER) -> list[Job]:
        """Mark the jobs that `choose` picks among the `window` oldest queued ones running under `worker`, in one
        transaction; other workers skip the rows this one holds meanwhile. Returns them, in queue order."""
        expired = 0
        if self.shared and time.monotonic() >= self._next_expiry_check:
            self._next_expiry_check = time.monotonic() + LEASE_S / 3
            expired = self.requeue_expired()
        with self._lock:
            # Woken by every change, a worker mostly finds nothing new: a plain read says so without a transaction.
            if not expired and self._execute("SELECT 1 FROM jobs WHERE state='queued' LIMIT 1").fetchone() is None:
                return []
            with self._transaction(synced=False):
                rows = self._execute(f"SELECT {COLUMNS} FROM jobs WHERE state='queued' ORDER BY seq LIMIT ?"
                                     f"{self.skip_locked}", (window,)).fetchall()
                jobs, unreadable = _parsed(rows)
                group = choose(jobs)
                self._start([job.id for job in group], worker)
            self.changed.notify_all()
        if unreadable:
            self._readable(unreadable)  # fails the jobs this version cannot read, with the reason
        if group or expired:
            self.on_change(ANY_JOB)  # every queued job moved up
        return group

    def start(self, job_ids: list[str], worker: str = LOCAL_WORKER) -> list[str]:
        """Mark queued jobs running under `worker`, all with one start time (they run in one call); returns those
        that started, in order: a job cancelled meanwhile does not."""
        with self._lock:
            with self._transaction(synced=False):
                started = self._start(job_ids, worker)
            self.changed.notify_all()
        self.on_change(ANY_JOB)
        return started

    def _start(self, job_ids: list[str], worker: str) -> list[str]:
        # Not synced: a start lost in a power loss leaves the job queued, and it runs after the restart as it would
        # have (a job found running is requeued anyway); the device waits for no disk between calls.
        started, now = [], time.time()
        for job_id in job_ids:
            if self._execute("UPDATE jobs SET state='running', started=?, worker=?, lease_expires=?, "
                             "cancel_requested=0, progress_done=0, progress_total=0 WHERE id=? AND state='queued'",
                             (now, worker, now + LEASE_S, job_id)).rowcount:
                started.append(job_id)
                self._announce(job_id, "started")
        if started:
            self._publish("change", ANY_JOB)
        return started

    def renew(self, worker: str) -> None:
        """The worker is alive: its running jobs' leases last another LEASE_S."""
        with self._lock, self._transaction(synced=False):
            self._execute("UPDATE jobs SET lease_expires=? WHERE state='running' AND worker=?",
                          (time.time() + LEASE_S, worker))

    def requeue_expired(self) -> int:
        """Running jobs whose worker stopped renewing its lease (it died) go back to the queue, at their place."""
        with self._lock, self._transaction():
            count = self._execute("UPDATE jobs SET state='queued', started=NULL, worker=NULL WHERE state='running' "
                                  "AND lease_expires < ?", (time.time(),)).rowcount
            if count:
                self._publish("change", ANY_JOB)
        if count:
            log.warning("%d job(s) of a worker that stopped renewing its lease went back to the queue", count)
        return count

    def requeue_interrupted(self) -> int:
        """Every running job goes back to the queue (at its place): the single-process server's start, after a
        crash (kill -9, power loss)."""
        with self._lock, self._transaction():
            return self._execute("UPDATE jobs SET state='queued', started=NULL, worker=NULL "
                                 "WHERE state='running'").rowcount

    def requeue(self, job_id: str, worker: str = LOCAL_WORKER) -> None:
        """A running job whose call was interrupted goes back to the queue, at its place (ordered by seq)."""
        self._transition(job_id, "running", "queued", worker=worker, started=None)

    def finish(self, job_id: str, results: list[dict[str, Any]], worker: str = LOCAL_WORKER) -> bool:
        """Record the job done; False (nothing recorded) if it is no longer this worker's."""
        return self._transition(job_id, "running", "done", worker=worker, results=json.dumps(results),
                                finished=time.time())

    def fail(self, job_id: str, error: str, error_type: str | None = None, worker: str = LOCAL_WORKER) -> bool:
        return self._transition(job_id, "running", "failed", worker=worker, error=error, error_type=error_type,
                                finished=time.time())

    def mark_cancelled(self, job_id: str, worker: str = LOCAL_WORKER) -> bool:
        return self._transition(job_id, "running", "cancelled", worker=worker, finished=time.time())

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once; a running one is marked (its worker, in whatever process, is told and stops
        at its next step). Returns the job's state after the call, None for an unknown job."""
        self._transition(job_id, "queued", "cancelled", finished=time.time())
        with self._lock, self._transaction():
            if self._execute("UPDATE jobs SET cancel_requested=1 WHERE id=? AND state='running'",
                             (job_id,)).rowcount:
                self._publish("cancel", job_id)
        job = self.get(job_id)
        return job.state if job else None

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        """Those of the jobs asked to stop (read once a call's jobs are registered: a cancel in between is seen)."""
        with self._lock:
            return {row[0] for row in self._execute(
                f"SELECT id FROM jobs WHERE cancel_requested=1 AND id IN ({', '.join('?' * len(job_ids))})",
                tuple(job_ids)).fetchall()} if job_ids else set()

    def record_progress(self, job_id: str, done: int, total: int, preview: bytes | None = None,
                        preview_step: int = 0) -> None:
        """A running job's steps (and latest preview), for an API in another process; not synced."""
        with self._lock, self._transaction(synced=False):
            if preview is None:
                self._execute("UPDATE jobs SET progress_done=?, progress_total=? WHERE id=?", (done, total, job_id))
            else:
                self._execute("UPDATE jobs SET progress_done=?, progress_total=?, preview=?, preview_step=? "
                              "WHERE id=?", (done, total, preview, preview_step, job_id))
            self._publish("progress", job_id)

    def live(self, job_id: str) -> tuple[int, int, bool, int, bytes | None] | None:
        """(steps done, of, asked to stop, preview step, preview JPEG) of a running job as its worker recorded them;
        None unless running."""
        with self._lock:
            row = self._execute("SELECT progress_done, progress_total, cancel_requested, preview_step, preview "
                                "FROM jobs WHERE id=? AND state='running'", (job_id,)).fetchone()
        if row is None:
            return None
        return row[0], row[1], bool(row[2]), row[3], None if row[4] is None else bytes(row[4])

    def running_ids(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._execute("SELECT id FROM jobs WHERE state='running' ORDER BY seq")]

    def wait_for_work(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)

    def check_writable(self) -> bool:
        """After a failed write: whether the store takes writes again, tried with a write larger than a job's (a
        smaller one might pass where the next job would not)."""
        if not self.writable:
            try:
                with self._lock, self._transaction():
                    self._execute("DELETE FROM probe")
                    self._execute("INSERT INTO probe VALUES (1, ?)", (bytes(PROBE_BYTES),))
            except Exception:  # noqa: BLE001 - StorageFull or StoreUnavailable: still not writable
                pass
        return self.writable

    # Webhook deliveries.

    def due_deliveries(self, now: float, limit: int = 20) -> list[Delivery]:
        """Webhook deliveries waiting to be (re)sent, oldest first."""
        with self._lock:
            rows = self._execute(f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE state='pending' AND due<=? "
                                 "ORDER BY seq LIMIT ?", (now, limit)).fetchall()
        return [Delivery(*row) for row in rows]

    def record_delivery(self, seq: int, attempts: int, error: str | None, retry_at: float | None) -> None:
        """A delivery's try: delivered (no error), pending again until `retry_at`, or given up (no retry_at)."""
        state = "delivered" if error is None else "pending" if retry_at is not None else "failed"
        with self._lock, self._transaction():
            self._execute("UPDATE deliveries SET state=?, attempts=?, error=?, due=COALESCE(?, due) WHERE seq=?",
                          (state, attempts, error, retry_at, seq))

    def deliveries(self, job_id: str) -> list[Delivery]:
        with self._lock:
            rows = self._execute(f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE job_id=? ORDER BY seq",
                                 (job_id,)).fetchall()
        return [Delivery(*row) for row in rows]

    def _announce(self, job_id: str, event: str) -> None:
        """Queue the job's webhook delivery for `event`, if it asked for one; in the caller's lock and transaction,
        so that the change and its delivery are stored together."""
        # Most jobs have no webhook: one small read decides, before the row (and its request) is read whole. A
        # request this version cannot read may be why the job changed: it is never read here without a webhook.
        if self._execute("SELECT webhook FROM jobs WHERE id=?", (job_id,)).fetchone()[0] is None:
            return
        job = job_from_row(self._execute(f"SELECT {COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone())
        if event in job.webhook.events:
            self._execute("INSERT INTO deliveries (job_id, event, url, payload, due) VALUES (?, ?, ?, ?, ?)",
                          (job_id, event, job.webhook.url, payload(event, job), time.time()))

    def _transition(self, job_id: str, before: str, after: str, *, worker: str | None = None,
                    **columns: Any) -> bool:
        """Move the job from `before` to `after` (setting `columns`); from running, only while `worker` holds it."""
        assignments = "".join(f", {name}=?" for name in columns)
        held, values = (" AND worker=?", (worker,)) if worker is not None else ("", ())
        with self._lock:
            with self._transaction():
                changed = self._execute(f"UPDATE jobs SET state=?{assignments} WHERE id=? AND state=?{held}",
                                        (after, *columns.values(), job_id, before, *values)).rowcount
                if changed and after in FINISHED:
                    self._announce(job_id, "finished")
                if changed:
                    self._publish("change", ANY_JOB if before == "queued" else job_id)
            self.changed.notify_all()
        if changed:
            self.on_change(ANY_JOB if before == "queued" else job_id)  # a job leaving the queue moves the others
        return bool(changed)


def _parsed(rows: list[tuple]) -> tuple[list[Job], list[tuple]]:
    """The rows as jobs, and the rows whose request this version cannot read."""
    jobs, unreadable = [], []
    for row in rows:
        try:
            jobs.append(job_from_row(row))
        except (ValueError, TypeError, KeyError):
            unreadable.append(row)
    return jobs, unreadable


def schema(*, serial: str, real: str, blob: str) -> list[str]:
    """The tables, in each database's names for an auto-incrementing key, a float and bytes."""
    return [f"""CREATE TABLE IF NOT EXISTS jobs (
    seq {serial},
    id TEXT UNIQUE NOT NULL,
    created {real} NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    results TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    started {real},
    finished {real}
)""", "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq)", f"""CREATE TABLE IF NOT EXISTS deliveries (
    seq {serial},
    job_id TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    due {real} NOT NULL,
    error TEXT
)""", "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, due)",
            f"CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, data {blob})"]


def added_columns(*, real: str, blob: str) -> dict[str, str]:
    """Columns added after the first release, with their type. Every database gets them at start-up, a new one too,
    so that the table has one history: ALTER TABLE ADD COLUMN keeps an older database's rows, which read NULL (or
    the default)."""
    return {"error_type": "TEXT", "idempotency_key": "TEXT", "webhook": "TEXT", "owner": "TEXT",
            "worker": "TEXT", "lease_expires": real, "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
            "progress_done": "INTEGER NOT NULL DEFAULT 0", "progress_total": "INTEGER NOT NULL DEFAULT 0",
            "preview": blob, "preview_step": "INTEGER NOT NULL DEFAULT 0"}


# A key is its owner's (keys.py): two users' equal keys are two jobs. The operator's jobs have no owner (NULL, which
# a plain unique index never finds equal), hence COALESCE. Jobs without a key (NULL) never collide.
INDEXES = ["DROP INDEX IF EXISTS jobs_idempotency_key",
           "CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_idempotency_key ON jobs ((COALESCE(owner, '')), "
           "idempotency_key)",
           "CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq)"]

