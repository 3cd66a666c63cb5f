"""Webhooks: signed deliveries of a job's start and end to allowed hosts, retried with backoff, resumed after a
restart (a real HTTP receiver on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imagegen.errors import InvalidRequest
from imagegen.request import GenerationRequest
from imagegen.server import webhooks
from imagegen.server.store.sqlite import SQLiteJobStore
from imagegen.server.webhooks import Courier, Webhook, WebhookPolicy

SECRET = b"test-secret"


class Receiver(ThreadingHTTPServer):
    """Records each POST (headers, body); answers `statuses` in turn, then 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N802, N805 - http.server's names
                body = handler.rfile.read(int(handler.headers["Content-Length"]))
                self.received.append((dict(handler.headers), body))
                handler.send_response(self.statuses.pop(0) if self.statuses else 200)
                handler.end_headers()

            def log_message(handler, *args: object) -> None:  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def until(condition, timeout: float = 10) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_only_allowed_hosts_and_known_events() -> None:
    closed = WebhookPolicy(())
    with pytest.raises(InvalidRequest, match="not allowed on this server .webhooks are off: start it with --webhook"):
        closed.check(Webhook("http://127.0.0.1:9/hook"))
    policy = WebhookPolicy(("hooks.example.com", "10.0.0.0/8"))
    policy.check(Webhook("https://HOOKS.example.com/x", ("started", "finished")))
    policy.check(Webhook("http://10.1.2.3:8080/x"))
    for url, message in (("http://169.254.169.254/latest", "host 169.254.169.254 is not allowed"),
                         ("file:///etc/passwd", "an http\\(s\\) URL"), ("http://evil.example.com/", "not allowed")):
        with pytest.raises(InvalidRequest, match=message):
            policy.check(Webhook(url))
    with pytest.raises(InvalidRequest, match="webhook events: choose from started, finished"):
        policy.check(Webhook("http://10.0.0.1/", ("done",)))


def test_start_and_end_are_delivered_signed(receiver, tmp_path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    job = store.add(GenerationRequest(prompt="7", recipe="digits", seed=3),
                    webhook=Webhook(receiver.url, ("started", "finished")))
    courier = Courier(store, SECRET, idle_wait=0.02)
    courier.start()
    try:
        store.start([job.id])
        store.finish(job.id, [{"file": f"{job.id}-0.png", "seed": 3, "infotext": "7\nSteps: 15"}])
        until(lambda: len(receiver.received) == 2)
    finally:
        courier.stop()
    events = []
    for headers, body in receiver.received:
        timestamp, digest = (part.split("=", 1)[1] for part in headers["Imagegen-Signature"].split(","))
        expected = hmac.new(SECRET, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(digest, expected) and abs(int(timestamp) - time.time()) < 60
        events.append((headers["Imagegen-Event"], json.loads(body)))
    assert [event for event, _ in events] == ["job.started", "job.finished"]
    finished = events[1][1]["job"]
    assert finished["state"] == "done" and finished["images"][0]["seed"] == 3 and finished["id"] == job.id
    assert [d.state for d in store.deliveries(job.id)] == ["delivered", "delivered"]


def test_a_failed_delivery_is_retried_and_a_restart_resumes_it(receiver, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(webhooks, "FIRST_RETRY_S", 0.2)
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    job = store.add(GenerationRequest(prompt="7", recipe="digits", seed=3), webhook=Webhook(receiver.url))
    store.start([job.id])
    store.fail(job.id, "boom")
    receiver.statuses = [503]
    first = Courier(store, SECRET, idle_wait=0.02)
    first.start()
    until(lambda: len(receiver.received) == 1)
    first.stop()
    first.join()
    [pending] = store.deliveries(job.id)
    assert (pending.state, pending.attempts, pending.error) == ("pending", 1, "HTTP 503")
    restarted = Courier(SQLiteJobStore(tmp_path / "jobs.sqlite3"), SECRET, idle_wait=0.02)  # as after a restart
    restarted.start()
    try:
        until(lambda: len(receiver.received) == 2)
    finally:
        restarted.stop()
    assert json.loads(receiver.received[1][1])["job"]["error"] == "boom"
    until(lambda: store.deliveries(job.id)[0].state == "delivered")


def test_the_native_api_takes_webhooks_and_idempotency_keys(serve, receiver, tmp_path) -> None:
    from server.test_queue import wait_done

    server = serve(tmp_path / "data", "--webhook-allow", "127.0.0.1")
    body = {"prompt": "7", "recipe": "digits", "seed": 4,
            "webhook": {"url": receiver.url, "events": ["started", "finished"]}}
    with server.client() as client:
        first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "retry-me"})
        again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "retry-me"})  # a client's retry
        refused = client.post("/v1/jobs", json={**body, "webhook": "http://10.0.0.1/hook"})
        assert first.status_code == again.status_code == 202, first.text
        assert first.json()["id"] == again.json()["id"]
        done = wait_done(client, first.json()["id"])
        until(lambda: len(receiver.received) == 2)
        until(lambda: [d["state"] for d in client.get(f"/v1/jobs/{done['id']}").json()["webhook"]["deliveries"]]
              == ["delivered", "delivered"])
        history = client.get("/v1/jobs").json()["jobs"]
        openai_body = {"model": "digits", "prompt": "3", "response_format": "url"}
        answers = [client.post("/v1/images/generations", json=openai_body, headers={"Idempotency-Key": "o-1"})
                   for _ in range(2)]
    assert refused.status_code == 422 and "host 10.0.0.1 is not allowed" in refused.json()["detail"]
    assert [job["id"] for job in history] == [done["id"]]
    assert [json.loads(body)["event"] for _, body in receiver.received] == ["job.started", "job.finished"]
    assert answers[0].headers["X-Imagegen-Job"] == answers[1].headers["X-Imagegen-Job"]
