"""Webhooks: a job may name a URL that is told when the job starts and when it ends, with the job as JSON.

Deliveries are rows of the job store, written in the same transaction as the job's change, so a restart resumes
them. The courier thread posts each, HMAC-signed with the server's secret (Stripe's scheme: the header
`Imagegen-Signature: t=TIMESTAMP,v1=HEX`, HEX = HMAC-SHA256(secret, "TIMESTAMP.BODY")), and retries a failed one
with exponential backoff. Only hosts the operator allows (`--webhook-allow`) may be called: a server must not be
turned into a client of arbitrary internal addresses.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from imagegen.errors import InvalidRequest

log = logging.getLogger("imagegen.server")
EVENTS = ("started", "finished")
MAX_ATTEMPTS = 10  # 1 s, 2 s, 4 s ... about 17 minutes from the first try to the last
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 3600.0
TIMEOUT_S = 10.0
SIGNATURE_HEADER = "Imagegen-Signature"


@dataclass(frozen=True)
class Webhook:
    url: str
    events: tuple[str, ...] = ("finished",)


class WebhookPolicy:
    """Which webhook URLs jobs may name: hosts by name, IP addresses or networks (`--webhook-allow`)."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.names = {entry.lower() for entry in allowed if not _network(entry)}
        self.networks = [network for entry in allowed if (network := _network(entry))]

    def check(self, webhook: Webhook) -> None:
        parts = urlsplit(webhook.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(f"webhook: an http(s) URL, got {webhook.url!r}")
        unknown = [event for event in webhook.events if event not in EVENTS]
        if unknown or not webhook.events:
            raise InvalidRequest(f"webhook events: choose from {', '.join(EVENTS)}, got {list(webhook.events)}")
        host = parts.hostname.lower()
        address = _address(host)
        allowed = host in self.names or (address is not None and any(address in net for net in self.networks))
        if not allowed:
            raise InvalidRequest(f"webhook host {host} is not allowed on this server" + (
                "" if self.names or self.networks else " (webhooks are off: start it with --webhook-allow HOST)"))


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def load_secret(path: Path) -> bytes:
    """The server's signing secret: kept in the data folder (readable by its owner only), made on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip().encode()


def retry_delay(attempts: int) -> float:
    return min(FIRST_RETRY_S * 2 ** (attempts - 1), MAX_RETRY_S)


class Courier(threading.Thread):
    """Posts due deliveries one at a time; a failed one waits retry_delay(attempts), at most MAX_ATTEMPTS tries."""

    def __init__(self, store: Any, secret: bytes, *, idle_wait: float = 1.0) -> None:
        super().__init__(name="imagegen-webhooks", daemon=True)
        self.store, self.secret, self.idle_wait = store, secret, idle_wait
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                due = self.store.due_deliveries(time.time())
                for delivery in due:
                    self._deliver(delivery)
                if not due:
                    self._stopping.wait(self.idle_wait)
            except Exception:  # noqa: BLE001 - a database error must not end the deliveries
                log.exception("the webhook courier failed; it goes on")
                self._stopping.wait(self.idle_wait)

    def stop(self) -> None:
        self._stopping.set()

    def _deliver(self, delivery: Any) -> None:
        body = delivery.payload.encode()
        timestamp = int(time.time())
        request = urllib.request.Request(delivery.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "imagegen-webhook",
            SIGNATURE_HEADER: signature(self.secret, timestamp, body),
            "Imagegen-Event": f"job.{delivery.event}", "Imagegen-Delivery": str(delivery.seq)})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - allowed hosts only
                response.read(1024)
            error = None
        except urllib.error.HTTPError as failure:
            error = f"HTTP {failure.code}"
        except (urllib.error.URLError, OSError) as failure:
            error = str(getattr(failure, "reason", failure))[:200]
        attempts = delivery.attempts + 1
        retry_at = None if error is None or attempts >= MAX_ATTEMPTS else time.time() + retry_delay(attempts)
        self.store.record_delivery(delivery.seq, attempts, error, retry_at)
        if error is not None:
            log.warning("webhook of job %s (%s) to %s failed, try %d: %s%s", delivery.job_id, delivery.event,
                        delivery.url, attempts, error, "" if retry_at else "; given up")


def payload(event: str, job: Any) -> str:
    """The JSON a webhook receives: the event and the job as the store holds it."""
    return json.dumps({"event": f"job.{event}", "job": {
        "id": job.id, "state": job.state, "recipe": job.request.recipe, "prompt": job.request.prompt,
        "seed": job.request.seed, "created": job.created, "started": job.started, "finished": job.finished,
        "images": [{"file": result["file"], "seed": result["seed"], "infotext": result["infotext"]}
                   for result in job.results],
        "error": job.error}})


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
