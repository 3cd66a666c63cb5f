"""What the job store holds, whichever database holds it: jobs, their webhook deliveries, and the errors a store
raises."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from imagegen.errors import Cancelled, ImagegenError, error_class
from imagegen.prompts.lora_tags import LoraSpec
from imagegen.request import GenerationRequest
from imagegen.server.webhooks import Webhook

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
COLUMNS = ("id, created, state, request, results, error, started, finished, error_type, webhook, owner, "
           "progress_done, progress_total")
DELIVERY_COLUMNS = "seq, job_id, event, url, payload, state, attempts, due, error"


class QueueFull(Exception):
    """The bounded queue has no room; the client should retry later."""


class JobIdTaken(ImagegenError):
    """A client-chosen job id that another caller's job has."""

    http_status = 409


@dataclass(frozen=True)
class Job:
    id: str
    created: float
    state: str
    request: GenerationRequest
    results: list[dict[str, Any]]  # per image: {"file": name under the images folder, "seed", "infotext"}
    error: str | None
    started: float | None
    finished: float | None
    error_type: str | None  # the class name of the ImagegenError a failed job failed with; None for anything else
    webhook: Webhook | None = None
    owner: str | None = None  # the user whose key made it (keys.py); None: the operator's, or a server without keys
    progress: tuple[int, int] | None = None  # (steps done, of) as a worker in another process last stored them

    @property
    def failure_status(self) -> int:
        """The HTTP status the synchronous APIs answer for a job that failed or was cancelled: its error class's, so
        that a user's mistake found only when the job ran is a 4xx; 500 for a failure of no known class (a bug, or a
        job recorded before classes were kept)."""
        error = Cancelled if self.state == "cancelled" else error_class(self.error_type)
        return error.http_status if error else 500


@dataclass(frozen=True)
class Delivery:
    """One webhook call of a job's event, and how its tries went."""

    seq: int
    job_id: str
    event: str
    url: str
    payload: str
    state: str  # pending, delivered or failed (given up)
    attempts: int
    due: float
    error: str | None


def request_to_json(request: GenerationRequest) -> str:
    data = asdict(request)
    data["loras"] = [{"name": lora.name, "weight": lora.weight} for lora in request.loras]
    return json.dumps(data)


def request_from_json(text: str) -> GenerationRequest:
    data = json.loads(text)
    known = {f.name for f in fields(GenerationRequest)}
    data = {key: value for key, value in data.items() if key in known}
    data["loras"] = tuple(LoraSpec(lora["name"], lora["weight"]) for lora in data.get("loras", ()))
    return GenerationRequest(**data)


def job_from_row(row: tuple) -> Job:
    """A Job from a row of COLUMNS; raises ValueError, TypeError or KeyError for a request this version cannot read."""
    (job_id, created, state, request, results, error, started, finished, error_type, webhook, owner, done,
     total) = row
    hook = json.loads(webhook) if webhook else None
    return Job(job_id, created, state, request_from_json(request), json.loads(results), error, started, finished,
               error_type, Webhook(hook["url"], tuple(hook["events"])) if hook else None, owner,
               (done, total) if total else None)
