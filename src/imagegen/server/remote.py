"""The engine workers as the API of a cluster sees them (`imagegen serve --cluster`): they run in other processes,
on other machines, and report through the shared job store. Stands where the single-process server has its
Worker, with the same attributes the APIs read."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

from imagegen.server.kept import KeptFiles
from imagegen.server.store import JobStore
from imagegen.server.worker import Progress


class RemoteWorkers:
    def __init__(self, engine: Any, store: JobStore) -> None:
        self.engine = engine  # not run here: it answers which recipes this machine holds (/v1/recipes)
        self.running = StoredProgress(store)
        self.kept = KeptFiles(budget=0)  # the results were written elsewhere
        self.unrecorded: list = []
        self.ready = threading.Event()
        self.ready.set()
        self.stopping = False  # queued jobs stay for the workers, whatever this API process does

    def start(self) -> None:
        """The workers are Serve's replicas, started and restarted by Ray."""

    def is_alive(self) -> bool:
        return True

    def stop(self, grace: float | None = None) -> None:
        """Nothing runs here to stop."""

    def shutdown(self, grace: float | None = None) -> None:
        """Nothing runs here to stop."""

    def cancel(self, job_id: str) -> bool:
        """The store's cancel already told the job's worker (its flag and a notification)."""
        return False


class StoredProgress(Mapping[str, Progress]):
    """Running job id -> its progress as its worker last recorded it in the store."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def __getitem__(self, job_id: str) -> Progress:
        live = self.store.live(job_id)
        if live is None:
            raise KeyError(job_id)
        done, total, cancelled, preview_step, preview = live
        progress = Progress(done, total, preview=preview, preview_step=preview_step)
        if cancelled:
            progress.cancel.set()
        return progress

    def __iter__(self) -> Iterator[str]:
        return iter(self.store.running_ids())

    def __len__(self) -> int:
        return len(self.store.running_ids())
