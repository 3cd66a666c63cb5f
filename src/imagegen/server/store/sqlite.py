"""The job store in one SQLite file beside the results: the single-machine default, nothing to install.

WAL mode with a full sync per commit: an accepted job is on disk before the 202 goes out. Checked at opening
(`PRAGMA quick_check`: a damaged file is named, with the way out), folded into one file at close.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from imagegen.errors import StorageFull, StoreDamaged
from imagegen.server.store.records import request_to_json
from imagegen.server.store.sql import INDEXES, JobStore, added_columns, schema

_TYPES = {"real": "REAL", "blob": "BLOB"}


class SQLiteJobStore(JobStore):
    def __init__(self, path: Path, *, max_queue: int = 100,
                 on_change: Callable[[str], None] = lambda job_id: None) -> None:
        super().__init__(max_queue=max_queue, on_change=on_change)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.created = not path.exists() or path.stat().st_size == 0  # a new store: an empty history
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._open()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise StoreDamaged(f"the job store {path} is damaged ({error}); `imagegen serve --repair` moves it aside "
                               "and rebuilds the finished jobs from the images' embedded parameters") from None

    def _open(self) -> None:
        check = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(check)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an accepted job is on disk before the 202 goes out
        for statement in schema(serial="INTEGER PRIMARY KEY AUTOINCREMENT", **_TYPES):
            self._db.execute(statement)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, kind in added_columns(**_TYPES).items():
            if name not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        for statement in INDEXES:
            self._db.execute(statement)

    def _execute(self, sql: str, parameters: tuple = ()) -> sqlite3.Cursor:
        with _storage_errors():
            return self._db.execute(sql, parameters)

    @contextmanager
    def _transaction(self, *, synced: bool = True) -> Iterator[None]:
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

    def close(self) -> None:
        """Fold the write-ahead log into the database file and close it: a backup of that one file is then whole."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

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
            self._execute("INSERT INTO jobs (id, created, state, request, results, started, finished) "
                          "VALUES (?, ?, 'done', ?, ?, ?, ?)",
                          (job_id, finished, request_to_json(request), json.dumps(results), finished, finished))


@contextmanager
def _storage_errors() -> Iterator[Any]:
    """SQLite's "database or disk is full" and failing writes as StorageFull (507 with Retry-After), not a 500."""
    try:
        yield
    except sqlite3.OperationalError as error:
        if any(sign in str(error) for sign in ("full", "disk I/O", "readonly")):
            raise StorageFull(f"the server's disk is full or cannot be written ({error}); nothing was stored") \
                from None
        raise
