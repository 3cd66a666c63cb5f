"""Connections cannot pin the server: idle sockets and slow headers are closed, and hundreds of sockets and event
streams leave /health answering at once (a real server process on 127.0.0.1)."""

from __future__ import annotations

import socket
import time

from server.test_queue import SLOW_DIGITS, submit, wait_running

IDLE_SOCKETS = 300
EVENT_STREAMS = 300


def test_300_idle_sockets_and_300_event_streams_leave_health_answering_within_100_ms(serve, tmp_path) -> None:
    server = serve(tmp_path / "data")
    host, port = server.url.removeprefix("http://").split(":")
    sockets: list[socket.socket] = []
    try:
        with server.client() as client:
            running = submit(client, prompt="8", **SLOW_DIGITS)
            wait_running(client, running)
            queued = submit(client, prompt="9", **SLOW_DIGITS)
            for _ in range(IDLE_SOCKETS):  # connect and send nothing
                sockets.append(socket.create_connection((host, int(port))))
            request = (f"GET /v1/jobs/{queued}/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
                       f"Authorization: Bearer {server.api_key}\r\n\r\n").encode()
            for _ in range(EVENT_STREAMS):  # follow the queued job, never reading the stream
                watcher = socket.create_connection((host, int(port)))
                watcher.sendall(request)
                sockets.append(watcher)
            time.sleep(1)  # every stream has been accepted and sent its first event
            latencies = []
            for _ in range(20):
                started = time.perf_counter()
                response = client.get("/health")
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200
            assert client.get("/metrics").status_code == 200
    finally:
        for each in sockets:
            each.close()
    assert sorted(latencies)[len(latencies) // 2] < 0.1, latencies  # the median; the slowest shown on failure
    assert max(latencies) < 0.5, latencies


def test_a_connection_whose_headers_do_not_arrive_is_closed(serve, server_env, tmp_path) -> None:
    server = serve(tmp_path / "data", env={**server_env, "IMAGEGEN_HEADER_TIMEOUT_S": "1"})
    host, port = server.url.removeprefix("http://").split(":")
    silent = socket.create_connection((host, int(port)))
    trickling = socket.create_connection((host, int(port)))
    trickling.sendall(b"GET /health HTTP/1.1\r\nHo")  # and nothing more
    started = time.monotonic()
    for each in (silent, trickling):
        each.settimeout(5)
        assert each.recv(1024) == b""  # closed by the server
        each.close()
    assert time.monotonic() - started < 3
    with server.client() as client:  # a prompt client is served as ever
        assert client.get("/health").status_code == 200
