"""The bytes of the latest result files, kept in memory for the synchronous APIs (OpenAI, A1111), which answer
with the images inline: built from these, an answer never reads back a file the worker has just written."""

from __future__ import annotations

import threading
from collections import OrderedDict

KEPT_BYTES = 64 * 2**20  # enough for the images of several full batches waiting to be answered


class KeptFiles:
    """File name -> bytes, the oldest forgotten past `budget` bytes (a job nobody waits for is answered from disk
    if ever asked); thread-safe (the worker's results thread adds, request threads take)."""

    def __init__(self, budget: int = KEPT_BYTES) -> None:
        self.budget = budget
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def keep(self, name: str, data: bytes) -> None:
        with self._lock:
            self._files[name] = data
            self._size += len(data)
            while self._size > self.budget:
                self._size -= len(self._files.popitem(last=False)[1])

    def take(self, name: str) -> bytes | None:
        """The file's bytes, forgotten here (a synchronous job is answered once); None when not kept."""
        with self._lock:
            data = self._files.pop(name, None)
            self._size -= len(data) if data is not None else 0
            return data
