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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from imagegen.errors import Cancelled, ImagegenError, StorageFull, StoreDamaged, error_class
from imagegen.prompts.lora_tags import LoraSpec
from imagegen.request import GenerationRequest
from imagegen.server.changes import ANY_JOB
from imagegen.server.webhooks import Webhook, payload

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
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, due);
"""
# Columns added after the first release, with their type. Every database gets them at start-up, a new one too, so
# that the table has one history: ALTER TABLE ADD COLUMN keeps an older database's rows, which read NULL.
_ADDED_COLUMNS = {"error_type": "TEXT", "idempotency_key": "TEXT", "webhook": "TEXT", "owner": "TEXT"}
# A key is its owner's (keys.py): two users' equal keys are two jobs. The operator's jobs have no owner (NULL, which
# a plain unique index never finds equal), hence COALESCE. Jobs without a key (NULL) never collide.
_INDEXES = """
DROP INDEX IF EXISTS jobs_idempotency_key;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_idempotency_key ON jobs (COALESCE(owner, ''), idempotency_key);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
"""


class QueueFull(Exception):
    """The bounded queue has no room; the client should retry later."""


class JobIdTaken(ImagegenError):
    """A client-chosen job id that another caller's job has."""

    http_status = 409


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
    webhook: Webhook | None = None
    owner: str | None = None  # the user whose key made it (keys.py); None: the operator's, or a server without keys

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

    def __init__(self, path: Path, *, max_queue: int = 100,
                 on_change: Callable[[str], None] = lambda job_id: None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_queue = path, max_queue
        self.on_change = on_change  # after a job's row changed; with ANY_JOB when the queue moved
        self.writable = True  # False since a write failed for want of space, until one succeeds
        self._lock = threading.Lock()
        self._additions: list[_Addition] = []  # jobs waiting for the next grouped commit (add)
        self._additions_lock = threading.Lock()
        self.created = not path.exists() or path.stat().st_size == 0  # a new store: an empty history
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._open()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise StoreDamaged(f"the job store {path} is damaged ({error}); `imagegen serve --repair` moves it aside "
                               "and rebuilds the finished jobs from the images' embedded parameters") from None
        self.changed = threading.Condition(self._lock)

    def _open(self) -> None:
        check = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(check)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an accepted job is on disk before the 202 goes out
        self._db.executescript(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        self._db.executescript(_INDEXES)

    def restore(self, job_id: str, files: list[Path]) -> None:
        """Record a finished job from its result files (`imagegen serve --repair`): its request is the first file's
        parameters, each file's seed its own; raises ValueError for a file without parameters."""
        from imagegen.outputs.metadata import read_parameters
        from imagegen.parameters import request_from_infotext

        texts = [read_parameters(path) for path in files]
        if any(text is None for text in texts):
            raise ValueError(f"{files[texts.index(None)].name} carries no generation parameters")
        requests = [request_from_infotext(text) for text in texts]
        request = replace(requests[0], num_images=len(files))
        results = [{"file": path.name, "seed": each.seed, "infotext": text}
                   for path, each, text in zip(files, requests, texts)]
        finished = max(path.stat().st_mtime for path in files)
        with self._lock:
            self._db.execute("INSERT INTO jobs (id, created, state, request, results, started, finished) "
                             "VALUES (?, ?, 'done', ?, ?, ?, ?)",
                             (job_id, finished, request_to_json(request), json.dumps(results), finished, finished))

    def check_writable(self) -> bool:
        """After a failed write: whether the store takes writes again, tried with a write larger than a job's (a
        smaller one might pass where the next job would not)."""
        if not self.writable:
            try:
                with self._lock, self._transaction():
                    self._db.execute("CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, data BLOB)")
                    self._db.execute("INSERT OR REPLACE INTO probe VALUES (1, zeroblob(?))", (PROBE_BYTES,))
            except StorageFull:
                pass
        return self.writable

    def close(self) -> None:
        """Fold the write-ahead log into the database file and close it: a backup of that one file is then whole."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    def requeue_interrupted(self) -> int:
        """Jobs left "running" by a crash go back to the queue (they keep their place: ordered by seq)."""
        with self._lock:
            return self._db.execute("UPDATE jobs SET state='queued', started=NULL WHERE state='running'").rowcount

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
                queued = self._db.execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()[0]
                for addition in additions:
                    before = self._db.total_changes
                    addition.outcome = self._insert(addition, queued)
                    queued += self._db.total_changes > before  # a new row (not a key's earlier job)
        except Exception as error:  # nothing of the group was stored  # noqa: BLE001 - each caller raises it
            for addition in additions:
                addition.outcome = error
            return
        self.changed.notify_all()

    def _insert(self, addition: _Addition, queued: int) -> Job | Exception:
        """The addition's job (the one its idempotency key or job id made before, or a new one); QueueFull if it has
        no room, JobIdTaken if its job id is another owner's."""
        key, owner = addition.idempotency_key, addition.owner
        known = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE COALESCE(owner, '')=? AND idempotency_key=?",
                                 (owner or "", key)).fetchone() if key is not None else None
        if known is None and addition.job_id is not None:
            known = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (addition.job_id,)).fetchone()
            if known is not None and _job(known).owner != owner:
                return JobIdTaken(f"job id {addition.job_id!r} is taken; choose another")
        if known is not None:
            return _job(known)
        if queued >= self.max_queue:
            return QueueFull(f"the queue holds {queued} jobs, its limit")
        job = Job(addition.job_id or uuid.uuid4().hex, time.time(), "queued", addition.request, [], None, None, None,
                  None, addition.webhook, owner)
        self._db.execute("INSERT INTO jobs (id, created, state, request, idempotency_key, webhook, owner) "
                         "VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                         (job.id, job.created, request_to_json(job.request), key,
                          json.dumps(asdict(job.webhook)) if job.webhook else None, owner))
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, *, offset: int = 0, limit: int = 50, owner: str | None = None) -> list[Job]:
        """Newest first: every job, or (with `owner`) that user's."""
        where, values = ("WHERE owner=?", (owner,)) if owner is not None else ("", ())
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                                    (*values, limit, offset)).fetchall()
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
        # Not synced: a start lost in a power loss leaves the job queued, and it runs after the restart as it would
        # have (a job found running is requeued anyway); the device waits for no disk between calls.
        with self._lock, self._transaction(synced=False):
            for job_id in job_ids:
                if self._db.execute("UPDATE jobs SET state='running', started=? WHERE id=? AND state='queued'",
                                    (now, job_id)).rowcount:
                    started.append(job_id)
                    self._announce(job_id, "started")
            self.changed.notify_all()
        self.on_change(ANY_JOB)  # every queued job moved up
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
    def _transaction(self, *, synced: bool = True) -> Iterator[None]:
        """Several statements, one commit (one disk sync; none unless `synced`: the next synced commit carries it to
        the disk, and a power loss before may lose it but never break the store); the caller holds the lock. A full
        disk is StorageFull."""
        try:
            with _storage_errors():
                if not synced:
                    self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: the commit is not synced, the store is safe
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
        except StorageFull:
            self.writable = False
            raise
        finally:
            if not synced:
                self._db.execute("PRAGMA synchronous=FULL")
        self.writable = True

    def due_deliveries(self, now: float, limit: int = 20) -> list[Delivery]:
        """Webhook deliveries waiting to be (re)sent, oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE state='pending' AND due<=? "
                                    "ORDER BY seq LIMIT ?", (now, limit)).fetchall()
        return [Delivery(*row) for row in rows]

    def record_delivery(self, seq: int, attempts: int, error: str | None, retry_at: float | None) -> None:
        """A delivery's try: delivered (no error), pending again until `retry_at`, or given up (no retry_at)."""
        state = "delivered" if error is None else "pending" if retry_at is not None else "failed"
        with self._lock:
            self._db.execute("UPDATE deliveries SET state=?, attempts=?, error=?, due=COALESCE(?, due) WHERE seq=?",
                             (state, attempts, error, retry_at, seq))

    def deliveries(self, job_id: str) -> list[Delivery]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE job_id=? ORDER BY seq",
                                    (job_id,)).fetchall()
        return [Delivery(*row) for row in rows]

    def _announce(self, job_id: str, event: str) -> None:
        """Queue the job's webhook delivery for `event`, if it asked for one; in the caller's lock and transaction,
        so that the change and its delivery are stored together."""
        # Most jobs have no webhook: one small read decides, before the row (and its request) is read whole. A
        # request this version cannot read may be why the job changed: it is never read here without a webhook.
        if self._db.execute("SELECT webhook FROM jobs WHERE id=?", (job_id,)).fetchone()[0] is None:
            return
        job = _job(self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone())
        if event in job.webhook.events:
            self._db.execute("INSERT INTO deliveries (job_id, event, url, payload, due) VALUES (?, ?, ?, ?, ?)",
                             (job_id, event, job.webhook.url, payload(event, job), time.time()))

    def _transition(self, job_id: str, before: str, after: str, **columns: Any) -> bool:
        assignments = ", ".join(f"{name}=?" for name in columns)
        with self._lock, self._transaction():
            changed = self._db.execute(
                f"UPDATE jobs SET state=?{', ' + assignments if assignments else ''} WHERE id=? AND state=?",
                (after, *columns.values(), job_id, before)).rowcount
            if changed and after in FINISHED:
                self._announce(job_id, "finished")
            self.changed.notify_all()
        if changed:
            self.on_change(ANY_JOB if before == "queued" else job_id)  # a job leaving the queue moves the others
        return bool(changed)


_COLUMNS = "id, created, state, request, results, error, started, finished, error_type, webhook, owner"
PROBE_BYTES = 64 * 1024  # several times a stored job with its results
_DELIVERY_COLUMNS = "seq, job_id, event, url, payload, state, attempts, due, error"


@dataclass
class _Addition:
    """A job to add, and once committed its outcome: the Job, or the error its caller raises."""

    request: GenerationRequest
    idempotency_key: str | None
    webhook: Webhook | None
    owner: str | None
    job_id: str | None
    outcome: Job | Exception | None = None


@dataclass(frozen=True)
class Delivery:
    """One webhook call of a job's event, and how its tries went."""

    seq: int
    job_id: str
    event: str
    url: str
    payload: str
    state: str  # pending, delivered or failed (given up)
    attempts: int
    due: float
    error: str | None


@contextmanager
def _storage_errors() -> Iterator[None]:
    """SQLite's "database or disk is full" and failing writes as StorageFull (507 with Retry-After), not a 500."""
    try:
        yield
    except sqlite3.OperationalError as error:
        if any(sign in str(error) for sign in ("full", "disk I/O", "readonly")):
            raise StorageFull(f"the server's disk is full or cannot be written ({error}); nothing was stored") \
                from None
        raise


def _job(row: tuple) -> Job:
    job_id, created, state, request, results, error, started, finished, error_type, webhook, owner = row
    hook = json.loads(webhook) if webhook else None
    return Job(job_id, created, state, request_from_json(request), json.loads(results), error, started, finished,
               error_type, Webhook(hook["url"], tuple(hook["events"])) if hook else None, owner)
