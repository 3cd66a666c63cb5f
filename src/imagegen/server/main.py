"""`imagegen serve`: settings from the command line, the refusal to listen unprotected, and uvicorn."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import TextIO

from imagegen.errors import InvalidRequest
from imagegen.server.service import ServerSettings

API_KEY_ENV = "IMAGEGEN_API_KEY"


def check_exposure(settings: ServerSettings) -> None:
    """Listening beyond this machine without a key lets anyone use the GPU and read every image: refuse that
    unless the operator says --insecure."""
    if settings.api_key or settings.insecure or _loopback(settings.host):
        return
    raise InvalidRequest(f"serving on {settings.host} needs an API key (--api-key or ${API_KEY_ENV}); "
                         "pass --insecure to serve without one")


def serve(settings: ServerSettings) -> None:
    import uvicorn

    from imagegen.engine import Engine, EngineOptions
    from imagegen.server.app import create_app
    from imagegen.server.service import Service

    check_exposure(settings)
    lock = _lock_data_dir(settings.data_dir)  # noqa: F841 - held for the life of the process
    engine = Engine(EngineOptions(device=settings.device, dtype=settings.dtype, offload=settings.offload,
                                  lora_names_only=True))
    service = Service(settings, engine)

    class Server(uvicorn.Server):
        """uvicorn turns SIGTERM into a graceful shutdown (no new requests, open ones drain, then the app's
        lifespan ends); this one also stops the worker at once, else the queue would run on during the drain."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            service.worker.stop(grace=settings.shutdown_grace_s)  # takes no lock: safe in a signal handler
            super().handle_exit(sig, frame)

    # uvicorn ends its graceful shutdown by raising the signal again, for the signal's default action (status
    # -15); a shutdown that was asked for and went well exits 0 instead.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    Server(uvicorn.Config(create_app(service), host=settings.host, port=settings.port, log_level="warning",
                          limit_concurrency=256, timeout_graceful_shutdown=2 * settings.shutdown_grace_s)).run()


def _lock_data_dir(data_dir: Path) -> TextIO:
    """One server per data folder: a second would requeue and run the first one's running jobs."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / "server.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise InvalidRequest(f"another imagegen server is using {data_dir}; give this one its own --data-dir") from None
    return handle


def api_key_from(value: str | None) -> str | None:
    return value or os.environ.get(API_KEY_ENV) or None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False
