"""Connections that cannot pin the server: a request's headers must arrive within settings.header_timeout_s() of the
connection (or of the last response on a kept-alive one), and an idle kept-alive connection closes after
KEEP_ALIVE_S.

uvicorn's own cap (`limit_concurrency`) counted idle sockets: 256 that sent nothing made every route, /health
included, answer a bare 503. uvicorn has no header-read timeout either (a byte of a request cancels its keep-alive
timer), so this protocol adds one; the server then needs no connection cap, and the work in flight is bounded
where it is queued (a full queue answers 429 with Retry-After, in each API's own shape).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from imagegen import settings

KEEP_ALIVE_S = 5  # uvicorn's default: a browser reuses a connection within that, and an idle one costs a socket


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose next request's headers take too long (slowloris: a socket
    that sends nothing, or a byte at a time)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request's headers were complete: it is the app's now
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers()  # the next request on this connection gets the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._stop_waiting()
        self._header_deadline = self.loop.call_later(settings.header_timeout_s(), self._headers_too_slow)

    def _stop_waiting(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()
