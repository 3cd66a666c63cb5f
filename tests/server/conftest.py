"""A real `imagegen serve` process on 127.0.0.1, with the built-in model and the tiny fixtures in its cache."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from postgres_server import PostgresServer

API_KEY = "test-key-0123456789"


@dataclass
class Server:
    url: str
    data_dir: Path
    process: subprocess.Popen
    api_key: str | None
    log: Path  # what the process printed (stdout and stderr)

    def output(self) -> str:
        return self.log.read_text()

    def client(self, **options) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **options)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# `python -c` with this, then the largest file size in bytes, then the command line: imagegen under RLIMIT_FSIZE (a
# write past it fails with EFBIG, as on a full disk; Python ignores the SIGXFSZ that comes with it).
LIMITED_FILE_SIZE = ("import resource, sys; from imagegen.cli import main; limit = int(sys.argv.pop(1)); "
                     "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)); "
                     "sys.exit(main(sys.argv[1:]))")  # the hard limit stays open: the test raises the soft one


def start_server(data_dir: Path, env: dict[str, str], *args: str, api_key: str | None = API_KEY,
                 port: int | None = None, max_file_bytes: int | None = None) -> Server:
    """Start `imagegen serve` (with `max_file_bytes`: unable to grow any file past that size) and wait until /ready
    answers 200."""
    port = port or free_port()
    start = ["-m", "imagegen.cli"] if max_file_bytes is None else ["-c", LIMITED_FILE_SIZE, str(max_file_bytes)]
    command = [sys.executable, *start, "serve", "--port", str(port), "--data-dir", str(data_dir),
               "--device", "cpu", *(["--api-key", api_key] if api_key else []), *args]
    # A file, not a pipe: a pipe nobody reads would block the server once its buffer is full.
    log = data_dir.with_name(f"{data_dir.name}-{port}.log")
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"imagegen serve exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return Server(url, data_dir, process, api_key, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("imagegen serve did not become ready in 60 s")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.process.kill()


@pytest.fixture(scope="session")
def server_env(hf_cache: Path, taesd_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment the server process sees: the tiny models' cache (with the tiny VAEs of `fast`), offline, a
    LoRA folder."""
    from tiny_sd15 import write_loras

    loras = tmp_path_factory.mktemp("server_loras")
    write_loras(loras)
    return {**os.environ, "HF_HUB_CACHE": str(hf_cache), "HF_HUB_OFFLINE": "1", "IMAGEGEN_LORA_DIR": str(loras),
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, server_env: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that do not restart or reconfigure it, with each job store."""
    args = ("--db", new_database(request.getfixturevalue("postgres"))) if request.param == "postgresql" else ()
    running = start_server(tmp_path_factory.mktemp("server_data"), server_env, *args)
    yield running
    stop_server(running)


@pytest.fixture
def serve(server_env: dict[str, str]) -> Iterator[Callable[..., Server]]:
    """Start servers with `serve(data_dir, *args, env=...)`; whatever still runs at the end is killed."""
    started: list[Server] = []

    def start(data_dir: Path, *args: str, env: dict[str, str] | None = None, **options: object) -> Server:
        started.append(start_server(data_dir, env or server_env, *args, **options))
        return started[-1]

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (Debian's package; .ci/run installs it)."""
    server = PostgresServer()
    server.start()
    yield server
    server.stop()
    server.remove()


@pytest.fixture
def database_url(postgres: PostgresServer) -> str:
    """A new, empty database on the session's PostgreSQL server."""
    return new_database(postgres)


def new_database(postgres: PostgresServer) -> str:
    import uuid

    import psycopg

    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., object]]:
    """`make_store(**options)`: the test's job store, opened (again: as after a restart) in each backend."""
    from imagegen.server.store import open_store

    url = request.getfixturevalue("database_url") if request.param == "postgresql" else None
    opened: list = []

    def make(**options: object) -> object:
        opened.append(open_store(url, tmp_path, **options))
        return opened[-1]

    yield make
    for store in opened:
        if request.param == "postgresql":
            store.close()
