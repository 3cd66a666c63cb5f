"""Where jobs are kept: SQLite beside the results (the default: one machine, one worker) or PostgreSQL (`--db
postgresql://...`: an API and engine workers on several machines). One interface, `JobStore` (sql.py); the
records it holds are in records.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from imagegen.errors import InvalidRequest
from imagegen.server.store.records import FINISHED, STATES, Delivery, Job, JobIdTaken, QueueFull
from imagegen.server.store.sql import LOCAL_WORKER, JobStore

STORE_NAME = "jobs.sqlite3"  # in the data folder

__all__ = ["FINISHED", "LOCAL_WORKER", "STATES", "STORE_NAME", "Delivery", "Job", "JobIdTaken", "JobStore",
           "QueueFull", "open_store"]


def open_store(db: str | None, data_dir: Path, *, max_queue: int = 100,
               on_change: Callable[[str], None] = lambda job_id: None) -> JobStore:
    """The store `--db` names: None for SQLite in the data folder, or a postgresql:// URL (psycopg needed: the
    cluster extra)."""
    if db is None:
        from imagegen.server.store.sqlite import SQLiteJobStore

        return SQLiteJobStore(data_dir / STORE_NAME, max_queue=max_queue, on_change=on_change)
    if not db.startswith(("postgresql://", "postgres://")):
        raise InvalidRequest(f"--db takes a postgresql:// URL, got {db.split(':', 1)[0]}:...")
    try:
        import psycopg  # noqa: F401 - only to say what is missing
    except ImportError:
        raise InvalidRequest("--db postgresql://... needs psycopg: pip install 'imagegen[cluster]'") from None
    from imagegen.server.store.postgres import PostgresJobStore

    return PostgresJobStore(db, max_queue=max_queue, on_change=on_change)
