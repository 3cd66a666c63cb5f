"""The server's state and the operations every API (native, OpenAI, A1111) is built from."""

from __future__ import annotations

import asyncio
import base64
import errno
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from imagegen.errors import ImagegenError, InvalidRequest
from imagegen.models.loras import find_lora_file
from imagegen.options import DEFAULT_RECIPE, OPTIONS
from imagegen.prompts.lora_tags import LoraSpec
from imagegen.recipes import get_recipe
from imagegen.request import GenerationRequest
from imagegen.server.arrivals import Arrivals
from imagegen.server.changes import ChangeFeed, wait_for
from imagegen.server.inputs import checked_model, discard_inputs, store_image
from imagegen.server.keys import OPERATOR, Caller
from imagegen.server.metrics import Metrics
from imagegen.server.store import FINISHED, Job, open_store
from imagegen.server.webhooks import Courier, Webhook, WebhookPolicy, load_secret
from imagegen.server.worker import Worker

IMAGE_FIELDS = ("init_image", "mask_image", "control_image")
IDEMPOTENCY_HEADER = "idempotency-key"  # on every submitting route: a retry gets the first job again
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
JOB_ID_HEADER = "imagegen-job-id"  # on every submitting route: the job's id, chosen by the client (idempotent too)
JOB_ID = re.compile(r"[A-Za-z0-9_()-]{1,64}")  # a part of file names and URLs; A1111's are "task(...)"
CHANGE_WAIT_S = 1.0  # a waiter reads its job at least this often (a stop is no job change)
_OPTIONS = {f.name for f in fields(GenerationRequest)} - {"prompt", "recipe", "loras", *IMAGE_FIELDS}


@dataclass(frozen=True)
class ServerSettings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 7860  # A1111's, so tools written for its API find us
    api_key: str | None = None  # the operator's: sees every job
    user_keys: tuple[tuple[str, str], ...] = ()  # (name, key): each sees only the jobs made with it
    insecure: bool = False
    max_queue: int = 100
    max_batch: int = 4
    max_body_bytes: int = 32 * 1024 * 1024
    # On SIGTERM the running call may finish within this; then it stops and its jobs run again after the restart.
    # 10 s: docker stop's wait before its SIGKILL.
    shutdown_grace_s: float = 10.0
    models_dir: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    offload: str = "auto"
    attention: str = "auto"
    threads: int | None = None  # torch's CPU threads; None: torch's default
    webhook_allow: tuple[str, ...] = ()  # hosts, addresses or networks that job webhooks may call; none: no webhooks
    repair: bool = False  # move a damaged job store aside and rebuild it from the result files, then serve
    min_free_bytes: int = 256 * 2**20  # below this free space in the data folder, /ready says no
    allowed_hosts: tuple[str, ...] = ()  # Host names served without a key besides the loopback ones
    wait_timeout_s: float = 1800.0  # the longest an OpenAI or A1111 call waits for its job (it runs on regardless)
    warm: tuple[str, ...] = ()  # RECIPE or RECIPE:FAST (warm_requests): run once before /ready says yes
    db: str | None = None  # the job store: None for SQLite in the data folder, else a postgresql:// URL
    results_in_db: bool = False  # result files kept in the PostgreSQL store (nodes without a shared data folder)
    remote_workers: bool = False  # the API of a cluster: engine workers run elsewhere, against the same store

    @property
    def keyed(self) -> bool:
        """Whether requests need a key."""
        return bool(self.api_key or self.user_keys)

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def inputs_dir(self) -> Path:
        return self.data_dir / "inputs"


class JobStillRunning(ImagegenError):
    """A synchronous call's job did not finish within the server's wait limit."""

    http_status = 504
    retry_after_s = 30


class ServerStopping(Exception):
    """The server is shutting down before a job that a synchronous request waits for could run."""


@contextmanager
def _overlong_names_refused() -> Iterator[None]:
    """A model or LoRA name is looked up on disk: one longer than the file system takes (a part over 255 bytes) is the
    request's fault, a 422, not the server's 500 (issue 13). The message names no path of the server's."""
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            raise
        raise InvalidRequest("a model or LoRA name is longer than a file name may be; name a shorter one") from None


class Service:
    def __init__(self, settings: ServerSettings, engine: Any) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.changes = ChangeFeed()
        self.store = open_store(settings.db, settings.data_dir, max_queue=settings.max_queue,
                                on_change=self.changes.notify)
        self.store.on_progress = self.changes.notify_progress  # from workers in other processes
        self.arrivals = Arrivals()
        if settings.remote_workers:
            from imagegen.server.remote import RemoteWorkers

            self.worker: Worker | RemoteWorkers = RemoteWorkers(engine, self.store)
        else:
            self.worker = Worker(engine, self.store, settings.images_dir, self.metrics, max_batch=settings.max_batch,
                                 warm=warm_requests(settings.warm), on_progress=self.changes.notify_progress,
                                 arrivals=self.arrivals, results_in_store=settings.results_in_db)
        self.webhooks = WebhookPolicy(settings.webhook_allow)
        self.courier = Courier(self.store, load_secret(settings.data_dir / "webhook-secret"))

    @_overlong_names_refused()
    def request_from_options(self, options: dict[str, Any]) -> GenerationRequest:
        """A resolved request from an API's options (GenerationRequest's names); images are base64 or bytes.

        Resolving here draws the seed and checks every limit before the job is accepted, so that a job that
        runs again after a crash gives the same images, and a bad request is a 4xx, not a failed job. Uploaded
        images are stored only once everything else passed, and removed again if the request is refused.
        """
        unknown = sorted(set(options) - _OPTIONS - {"prompt", "recipe", "loras", *IMAGE_FIELDS})
        if unknown:
            raise InvalidRequest(f"unknown option(s): {', '.join(unknown)}")
        recipe = get_recipe(options.get("recipe") or DEFAULT_RECIPE)
        loras = tuple(LoraSpec.parse(lora) if isinstance(lora, str) else LoraSpec(lora["name"], lora.get("weight", 1.0))
                      for lora in options.get("loras") or ())
        given = {name: OPTIONS[name].from_api(value) for name, value in options.items()
                 if name in _OPTIONS and value is not None}
        given = {name: value for name, value in given.items() if value is not None}
        for name in ("model", "controlnet"):  # the two options that name models
            if given.get(name):
                given[name] = checked_model(given[name], self.settings.models_dir)
        if given.get("output_format") == "frames":
            raise InvalidRequest("output format frames writes a folder, which the server cannot serve: "
                                 "choose mp4, gif or webp")
        uploads = [name for name in IMAGE_FIELDS if options.get(name)]
        request = GenerationRequest(prompt=options.get("prompt") or "", recipe=recipe.name, loras=loras, **given,
                                    **{name: "(upload)" for name in uploads})  # stored once the rest is valid
        request.validate()
        stored: list[str] = []
        try:
            for name in uploads:
                stored.append(store_image(options[name], self.settings.inputs_dir, what=name.replace("_", " ")))
                request = replace(request, **{name: stored[-1]})
            resolved = request.resolve(recipe)
            for lora in resolved.loras:  # the prompt's <lora:...> tags included
                find_lora_file(lora.name, names_only=True)  # a missing or out-of-folder LoRA is refused now
        except Exception:
            discard_inputs(*stored)
            raise
        return resolved

    def submit(self, request: GenerationRequest, idempotency_key: str | None = None, webhook: Webhook | None = None,
               *, caller: Caller = OPERATOR, job_id: str | None = None) -> Job:
        """Queue a resolved request for `caller`, as job `job_id` if the client chose one; a retry with the same
        Idempotency-Key or job id gets the first job again."""
        try:
            if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
                raise InvalidRequest("Idempotency-Key: 1 to 255 printable ASCII characters (a UUID, say)")
            if job_id is not None and not JOB_ID.fullmatch(job_id):
                raise InvalidRequest("a chosen job id is 1 to 64 letters, digits, '_', '-', '(' or ')'")
            if webhook is not None:
                self.webhooks.check(webhook)
            return self.store.add(request, idempotency_key=idempotency_key, webhook=webhook, owner=caller.name,
                                  job_id=job_id)
        finally:
            self.arrivals.stored()

    def job(self, job_id: str, caller: Caller) -> Job | None:
        """The job, if there is one that `caller` may see."""
        job = self.store.get(job_id)
        return job if job is not None and caller.sees(job.owner) else None

    def not_ready(self) -> str | None:
        """Why the server cannot take jobs now (None: it can): /ready's answer, for load balancers."""
        if not (self.worker.ready.is_set() and self.worker.is_alive()):
            return "the worker is starting (or has stopped)"
        if not self.store.check_writable() or self.worker.unrecorded:
            return "the job store cannot be written (a full disk?)"
        free = shutil.disk_usage(self.settings.data_dir).free
        if free < self.settings.min_free_bytes:
            return f"{free // 2**20} MiB free in the data folder, under {self.settings.min_free_bytes // 2**20} MiB"
        return None

    def preview(self, job: Job) -> tuple[int, str] | None:
        """(step, base64 JPEG) of the running job's latest live preview; None before the first or when not running."""
        live = self.worker.running.get(job.id)
        if live is None or live.preview is None:
            return None
        return live.preview_step, base64.b64encode(live.preview).decode()

    def progress(self, job: Job) -> dict[str, Any]:
        live = self.worker.running.get(job.id)
        return {"done": live.done, "total": live.total} if live else \
            {"done": 0 if job.state != "done" else 1, "total": 1 if job.state == "done" else 0}

    def cancel(self, job_id: str) -> str | None:
        state = self.store.cancel(job_id)
        if state == "cancelled":
            job = self.store.get(job_id)
            discard_inputs(*(getattr(job.request, name) for name in IMAGE_FIELDS))
        if state == "running":
            self.worker.cancel(job_id)
        return state

    async def wait(self, job_id: str) -> Job:
        """The job once finished (for the synchronous OpenAI and A1111 APIs), read again at each of its changes.

        Raises ServerStopping if the server stops with the job still queued: the job is cancelled, as its
        client is told to retry (no orphan job runs after the restart). Raises JobStillRunning past
        `wait_timeout_s` (a job stuck behind a full disk must not hold its caller for ever).
        """
        deadline = time.monotonic() + self.settings.wait_timeout_s
        while True:
            if time.monotonic() > deadline:
                raise JobStillRunning(f"job {job_id} has not finished within {self.settings.wait_timeout_s:g} s; it "
                                      f"goes on: follow it at /v1/jobs/{job_id}")
            change = self.changes.next_change(job_id, progress=False)  # its end, not its steps
            job = await asyncio.to_thread(self.store.get, job_id)
            if job is None or job.state in FINISHED:
                change.cancel()
                return job
            if job.state == "queued" and self.worker.stopping and self.store.cancel(job_id) == "cancelled":
                raise ServerStopping("the server is shutting down; retry later")
            await wait_for(change, CHANGE_WAIT_S)

    def encoded_image(self, name: str) -> str | None:
        """A result file as base64 (the OpenAI and A1111 APIs return images inline), from the bytes the worker kept
        when it wrote the file, else from the disk; None if it is gone."""
        data = self.worker.kept.take(name)
        if data is None:
            data = self.image_bytes(name)
        return None if data is None else base64.b64encode(data).decode()

    def image_bytes(self, name: str, caller: Caller = OPERATOR) -> bytes | None:
        """A result file's bytes, from the images folder or (`--results-in-db`) the store."""
        path = self.image_path(name, caller)
        if path is not None:
            return path.read_bytes()
        if self.settings.results_in_db and (caller.name is None or self.job(_job_of(name), caller) is not None):
            return self.store.result(name)
        return None

    def image_path(self, name: str, caller: Caller = OPERATOR) -> Path | None:
        """A result file by name ("JOBID-INDEX.EXT"), never outside the images folder, nor of a job that `caller`
        may not see."""
        if "/" in name or "\\" in name or name.startswith("."):
            return None
        if caller.name is not None and self.job(_job_of(name), caller) is None:
            return None
        path = self.settings.images_dir / name
        return path if path.is_file() else None




def _job_of(name: str) -> str:
    """The job id of a result file's name, JOBID-INDEX.EXT."""
    return name.rpartition(".")[0].rpartition("-")[0]


def warm_requests(specs: tuple[str, ...]) -> tuple[GenerationRequest, ...]:
    """`--warm` values (RECIPE, or RECIPE:FAST with FAST as the `fast` option takes it) as the requests that warm
    them: the recipe's defaults, so that jobs with the same `fast` value find the pipeline loaded (and compiled)."""
    requests = []
    for spec in specs:
        name, _, fast = spec.partition(":")
        recipe = get_recipe(name)
        if recipe.control or recipe.image_conditioned:
            raise InvalidRequest(f"--warm {spec}: recipe {name} needs an input image; its first job warms it")
        prompt = "0" if recipe.check_prompt else "warm-up"  # class-conditional recipes take a class id
        requests.append(GenerationRequest(prompt=prompt, recipe=name, fast=fast or None, seed=0).resolve(recipe))
    return tuple(requests)
