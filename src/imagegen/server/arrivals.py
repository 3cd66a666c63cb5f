"""Requests that may bring a job and have not stored it yet.

A burst of clients arrives together, but their jobs reach the queue one by one, each after its request is parsed:
a worker that starts a call at the first job runs it alone and the rest in the next calls (16 clients: calls of
1, 4, 4, 4, 3). Told how many submissions are still on their way, the worker waits a moment for them when its
call has room left (issue 13: 16 clients at the engine's own throughput). A lone client never waits: when its
job is stored, no other is on its way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

BATCH_WAIT_S = 0.02  # the longest a call with room left waits for jobs on their way


class Arrivals:
    """A count of POST requests whose job (if they bring one) is not stored yet; thread-safe."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()
        self._current: ContextVar[_Arrival | None] = ContextVar("arrival", default=None)

    @property
    def pending(self) -> int:
        return self._count

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """A request on its way, until it calls stored() or ends."""
        arrival = _Arrival()
        with self._lock:
            self._count += 1
        token = self._current.set(arrival)
        try:
            yield
        finally:
            self._current.reset(token)
            self._leave(arrival)

    def stored(self) -> None:
        """The current request's job is in the queue (or refused): it is no longer on its way. Called from the
        request's context (asyncio.to_thread carries it into its thread)."""
        arrival = self._current.get()
        if arrival is not None:
            self._leave(arrival)

    def _leave(self, arrival: _Arrival) -> None:
        with self._lock:
            if not arrival.left:
                arrival.left = True
                self._count -= 1


class _Arrival:
    left = False


class CountArrivals:
    """ASGI middleware: each POST counts as arriving from its first byte until its job is stored or it ends."""

    def __init__(self, app: Any, *, arrivals: Arrivals) -> None:
        self.app, self.arrivals = app, arrivals

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        with self.arrivals.arriving():
            await self.app(scope, receive, send)
