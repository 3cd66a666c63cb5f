"""Wake the coroutines that follow a job when it changes, from whichever thread changed it.

Server-sent events and the APIs' waiting calls used to read the job from the database every 0.1 s each: 300
watchers made 3,000 reads a second on the event loop. Now each waits for a change of its job (or of the queue,
which moves every queued job's position), then reads once.
"""

from __future__ import annotations

import asyncio
import threading

ANY_JOB = "*"  # a change that concerns every job: the queue moved


class ChangeFeed:
    """Two kinds of change: a job's state (the store's rows: it started, ended, the queue moved) and its progress (a
    step, a preview: in memory, several a second). A waiter asks for progress or not: a call waiting for its job's
    end is not woken at every step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[tuple[str, bool], list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    def next_change(self, job_id: str, *, progress: bool = True) -> asyncio.Future[None]:
        """A future done at the job's next change (of state only, unless `progress`). Take it before reading the
        job, so that a change in between is not missed. Call it on the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiters.setdefault((job_id, progress), []).append((loop, future))
        return future

    def notify(self, job_id: str = ANY_JOB) -> None:
        """The job's state (ANY_JOB: every job's) changed; any thread may call this."""
        with self._lock:
            if job_id == ANY_JOB:
                woken = [waiter for waiters in self._waiters.values() for waiter in waiters]
                self._waiters.clear()
            else:
                woken = [*self._waiters.pop((job_id, True), []), *self._waiters.pop((job_id, False), [])]
        _wake(woken)

    def notify_progress(self, job_id: str) -> None:
        """The running job made a step or a preview; any thread may call this."""
        with self._lock:
            woken = self._waiters.pop((job_id, True), [])
        _wake(woken)


async def wait_for(change: asyncio.Future[None], timeout: float) -> None:
    """Until the change, or `timeout` seconds (a bound: a waiter never depends on a notification alone)."""
    try:
        await asyncio.wait_for(change, timeout)
    except TimeoutError:
        change.cancel()


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    for loop, future in waiters:
        if not loop.is_closed():
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
