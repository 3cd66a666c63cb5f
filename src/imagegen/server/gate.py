"""What every request passes before any route sees it: the origin of browser requests, the Host name, and the body
size. Plain ASGI (no BaseHTTPMiddleware, which runs each request's endpoint in a task of its own and costs a
quarter of a small request's time; issue 13's profile)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from starlette.responses import JSONResponse


class RequestGate:
    """A web page elsewhere must not drive a server on localhost (a browser sends Origin with cross-site requests;
    same-site pages and non-browser clients pass); without a key, a Host that is not this server's is refused, as
    DNS rebinding makes another site's name point here; a body over the limit is a 413, whether it says its length
    or arrives in chunks."""

    def __init__(self, app: Any, *, limit: int, local_names: set[str] | None) -> None:
        """`local_names`: the Host names served (None: any, as with a key)."""
        self.app, self.limit, self.local_names = app, limit, local_names

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(dict(scope["headers"]))
        if refusal is not None:
            return await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)(scope, receive,
                                                                                                     send)

    def _refusal(self, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        origin = headers.get(b"origin", b"").decode("latin-1")
        host = headers.get(b"host", b"").decode("latin-1")
        if origin and urlsplit(origin).netloc != host:  # "null" (sandboxed frames) included
            return 403, f"requests from {origin} are not accepted"
        if self.local_names is not None and _hostname(host) not in self.local_names:
            return 403, f"host {host!r} is not this server's name"
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return 413, f"request body over {self.limit} bytes"
        return None


def _hostname(host: str) -> str | None:
    try:
        return urlsplit(f"//{host}").hostname
    except ValueError:  # "[::1" and the like: no name of ours
        return None


class _TooLarge(Exception):
    pass
