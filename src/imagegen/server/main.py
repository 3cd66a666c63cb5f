"""`imagegen serve`: settings from the command line, the refusal to listen unprotected, what the server says on
start and per job, and uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from imagegen.errors import InvalidRequest
from imagegen.server.keys import read_key_file
from imagegen.server.service import ServerSettings
from imagegen.server.store import STORE_NAME

if TYPE_CHECKING:
    from imagegen.engine import Engine

API_KEY_ENV = "IMAGEGEN_API_KEY"
log = logging.getLogger("imagegen.server")


def check_exposure(settings: ServerSettings) -> None:
    """Listening beyond this machine without a key lets anyone use the GPU and read every image: refuse that
    unless the operator says --insecure."""
    if settings.keyed or settings.insecure or _loopback(settings.host):
        return
    raise InvalidRequest(f"serving on {settings.host} needs an API key (--api-key-file, ${API_KEY_ENV} or "
                         "--api-key); pass --insecure to serve without one")


SWITCH_INTERVAL_S = 0.0005  # how long a thread may hold the GIL while another waits for it (CPython: 0.005)


def serve(settings: ServerSettings) -> None:
    import uvicorn

    from imagegen.engine import Engine, EngineOptions
    from imagegen.server.app import create_app
    from imagegen.server.connections import KEEP_ALIVE_S, HeaderTimeoutH11Protocol
    from imagegen.server.repair import repair
    from imagegen.server.service import Service

    check_exposure(settings)
    # A request thread that waits for the GIL while it holds the job store's lock stalls every other request:
    # the worker's Python would keep the GIL for CPython's default 5 ms. 0.5 ms took a 16-client burst from 0.68
    # to 0.87 of the engine's throughput (benchmarks/server_overhead.py); alone, the worker loses nothing.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    lock = _lock_data_dir(settings.data_dir)  # noqa: F841 - held for the life of the process
    log_to_stderr()
    engine = Engine(EngineOptions(device=settings.device, dtype=settings.dtype, offload=settings.offload,
                                  lora_names_only=True, attention=settings.attention, threads=settings.threads))
    for line in startup_lines(settings, engine):
        log.info(line)
    if settings.repair:
        repair(settings.data_dir / STORE_NAME, settings.images_dir).close()
    service = Service(settings, engine)
    results = sum(1 for _ in settings.images_dir.glob("*")) if settings.images_dir.is_dir() else 0
    if service.store.created and results:
        log.warning("warning: a new, empty job store beside %d result file(s) in %s: the history starts empty "
                    "(`imagegen serve --repair` rebuilds it from them)", results, settings.images_dir)

    class Server(uvicorn.Server):
        """uvicorn turns SIGTERM into a graceful shutdown (no new requests, open ones drain, then the app's
        lifespan ends); this one also stops the worker at once, else the queue would run on during the drain."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            service.worker.stop(grace=settings.shutdown_grace_s)  # takes no lock: safe in a signal handler
            super().handle_exit(sig, frame)

    # uvicorn ends its graceful shutdown by raising the signal again, for the signal's default action (status
    # -15); a shutdown that was asked for and went well exits 0 instead.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    service.courier.start()
    try:
        Server(uvicorn.Config(create_app(service), host=settings.host, port=settings.port, log_level="warning",
                              http=HeaderTimeoutH11Protocol, timeout_keep_alive=KEEP_ALIVE_S,
                              timeout_graceful_shutdown=2 * settings.shutdown_grace_s)).run()
    finally:
        service.courier.stop()
        service.store.close()  # the write-ahead log folded in: the database file alone is a whole backup


def startup_lines(settings: ServerSettings, engine: Engine) -> list[str]:
    """What the operator needs to know before the first request: where to go, where the data is, which recipes run
    without a download, whether a key protects the server, and the risk of the address it listens on."""
    from imagegen import settings as environment
    from imagegen.recipes import RECIPES
    from imagegen.version import __version__

    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    ready = [name for name, recipe in RECIPES.items() if engine.is_ready(recipe)]
    others = len(RECIPES) - len(ready)
    lines = [f"imagegen {__version__} serving http://{host}:{settings.port}/ (web page; APIs under /v1 and /sdapi/v1)",
             f"data folder: {settings.data_dir.resolve()}",
             f"recipes ready on this machine: {', '.join(ready) or 'none'}"]
    if others:
        lines[-1] += (f"; the other {others} lack models and HF_HUB_OFFLINE is set, so they fail until the models "
                      "are in the cache" if environment.hf_offline() else
                      f"; the other {others} download their models on first use") + " (imagegen recipes lists them)"
    if settings.keyed:
        users = f"; {len(settings.user_keys)} user key(s), each seeing its own jobs" if settings.user_keys else ""
        lines.append(f"API key: required (Authorization: Bearer KEY, or KEY as the basic-auth password){users}")
    else:
        lines.append("API key: none (every user and program on this machine can use the server)")
    if not _loopback(settings.host):
        lines.append(f"warning: listening on {settings.host} without an API key (--insecure): anyone who can reach "
                     "this port can generate images and see every image in the data folder" if not settings.keyed
                     else f"warning: listening on {settings.host} over plain HTTP: the API key and the images cross "
                     "the network unencrypted; put an HTTPS proxy in front on networks you do not trust")
    return lines


def log_to_stderr() -> None:
    """The server's own lines (start-up, one per job) go to stderr as plain lines, from INFO up; uvicorn keeps its
    access log at warnings."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("imagegen")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


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


def api_keys_from(value: str | None, file: Path | None = None) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """(the operator's key, the users' (name, key)) from --api-key, else --api-key-file (kept out of `ps`; see
    keys.py for its lines), else $IMAGEGEN_API_KEY; (None, ()): no key."""
    if value:
        return value, ()
    if file is not None:
        return read_key_file(file)
    return os.environ.get(API_KEY_ENV) or None, ()


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
