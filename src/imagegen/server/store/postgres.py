"""The job store in PostgreSQL (`--db postgresql://...`, psycopg 3): one store for the API and engine workers on
several machines (`imagegen serve --cluster`).

Workers claim jobs with `SELECT ... FOR UPDATE SKIP LOCKED`, so that two never take the same job nor wait for
each other; every change is announced with NOTIFY on one channel, which the API (to wake event streams and waiting
requests) and the workers (to stop a job asked to stop, to take new work at once) LISTEN to. A lost server is
StoreUnavailable (503 with Retry-After) until it is back: each operation reconnects, the listener too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from imagegen.errors import StoreUnavailable
from imagegen.server.changes import ANY_JOB
from imagegen.server.store.sql import INDEXES, JobStore, added_columns, schema

log = logging.getLogger("imagegen.server")
CHANNEL = "imagegen"
_TYPES = {"real": "DOUBLE PRECISION", "blob": "BYTEA"}
_SCHEMA_LOCK = 0x696D6167  # an advisory lock: workers starting together create the tables once
CONNECT_TIMEOUT_S = 10


class PostgresJobStore(JobStore):
    skip_locked = " FOR UPDATE SKIP LOCKED"
    shared = True
    created = False  # the history lives in the database, not beside the results

    def __init__(self, url: str, *, max_queue: int = 100,
                 on_change: Callable[[str], None] = lambda job_id: None) -> None:
        super().__init__(max_queue=max_queue, on_change=on_change)
        self.url = url
        self._db: Any = None
        self._stopping = threading.Event()
        with self._lock:
            if not self._schema_current():  # DDL locks the table whole: never while other workers use it, if it can
                with self._transaction():
                    self._execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
                    for statement in schema(serial="BIGSERIAL PRIMARY KEY", **_TYPES):
                        self._execute(statement)
                    for name, kind in added_columns(**_TYPES).items():
                        self._execute(f"ALTER TABLE jobs ADD COLUMN IF NOT EXISTS {name} {kind}")
                    for statement in INDEXES:
                        self._execute(statement)
                    self._execute("CREATE TABLE IF NOT EXISTS results (name TEXT PRIMARY KEY, data BYTEA NOT NULL)")
        self._listener = threading.Thread(target=self._listen, name="imagegen-store-listener", daemon=True)
        self._listener.start()

    def _schema_current(self) -> bool:
        """Whether every table, column and index of this version is there (the caller holds the lock)."""
        columns = {row[0] for row in self._execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name='jobs' "
            "AND table_schema=current_schema()")}
        indexes = {row[0] for row in self._execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname=current_schema()")}
        tables = {row[0] for row in self._execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema=current_schema()")}
        return set(added_columns(**_TYPES)) <= columns and {"jobs_owner_idempotency_key", "jobs_owner"} <= indexes \
            and {"jobs", "deliveries", "probe", "results"} <= tables

    def _connection(self) -> Any:
        if self._db is None or self._db.closed:
            self._db = connect(self.url)
        return self._db

    def _execute(self, sql: str, parameters: tuple = ()) -> Any:
        import psycopg

        try:
            return self._connection().execute(sql.replace("?", "%s"), parameters)
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            self._lost(error)

    @contextmanager
    def _transaction(self, *, synced: bool = True) -> Iterator[None]:
        import psycopg

        try:
            with self._connection().transaction():
                if not synced:
                    self._execute("SET LOCAL synchronous_commit = off")
                yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            self._lost(error)

    def _lost(self, error: Exception) -> None:
        """The connection is gone (the server restarts): the next operation connects again."""
        if self._db is not None:
            self._db.close()
        self._db = None
        raise StoreUnavailable(f"the job database cannot be reached ({str(error).strip() or type(error).__name__});"
                               " retry shortly") from None

    def _publish(self, kind: str, job_id: str) -> None:
        self._execute("SELECT pg_notify(?, ?)", (CHANNEL, f"{kind}:{job_id}"))

    def save_results(self, files: dict[str, bytes]) -> None:
        """Result files kept in the database, for clusters without a shared folder (`--results-in-db`)."""
        with self._lock, self._transaction():
            for name, data in files.items():
                self._execute("INSERT INTO results (name, data) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
                              "SET data = EXCLUDED.data", (name, data))

    def result(self, name: str) -> bytes | None:
        with self._lock:
            row = self._execute("SELECT data FROM results WHERE name=?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        self._listener.join(timeout=5)

    def _listen(self) -> None:
        """NOTIFYs to the wake-ups; after a lost connection, everything is announced changed (some were missed)."""
        missed = False
        while not self._stopping.is_set():
            try:
                with connect(self.url) as listening:
                    listening.execute(f"LISTEN {CHANNEL}")
                    if missed:
                        self._wake("change", ANY_JOB)
                    while not self._stopping.is_set():
                        for note in listening.notifies(timeout=1.0):
                            self._wake(*note.payload.split(":", 1))
            except Exception as error:  # noqa: BLE001 - the server restarts: listen again once it is back
                if not self._stopping.is_set():
                    log.warning("the job database's notifications stopped (%s); listening again", error)
                    missed = True
                    self._stopping.wait(1.0)

    def _wake(self, kind: str, job_id: str) -> None:
        if kind == "change":
            with self.changed:
                self.changed.notify_all()
            self.on_change(job_id)
        elif kind == "progress":
            self.on_progress(job_id)
        elif kind == "cancel":
            self.on_cancel(job_id)


def connect(url: str) -> Any:
    """An autocommit connection (transactions are explicit); StoreUnavailable, naming the server, if it fails."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as error:
        raise StoreUnavailable(f"cannot connect to the job database {redacted(url)}: "
                               f"{str(error).strip().splitlines()[0] if str(error).strip() else error}") from None


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
