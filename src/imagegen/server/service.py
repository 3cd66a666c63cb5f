"""The server's state and the operations every API (native, OpenAI, A1111) is built from."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from imagegen.errors import InvalidRequest
from imagegen.models.loras import find_lora_file
from imagegen.options import DEFAULT_RECIPE, OPTIONS
from imagegen.prompts.lora_tags import LoraSpec
from imagegen.recipes import get_recipe
from imagegen.request import GenerationRequest
from imagegen.server.inputs import checked_model, discard_inputs, store_image
from imagegen.server.jobs import FINISHED, Job, JobStore
from imagegen.server.metrics import Metrics
from imagegen.server.worker import Worker

IMAGE_FIELDS = ("init_image", "mask_image", "control_image")
_OPTIONS = {f.name for f in fields(GenerationRequest)} - {"prompt", "recipe", "loras", *IMAGE_FIELDS}


@dataclass(frozen=True)
class ServerSettings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 7860  # A1111's, so tools written for its API find us
    api_key: str | None = None
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
    warm: tuple[str, ...] = ()  # RECIPE or RECIPE:FAST (warm_requests): run once before /ready says yes

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def inputs_dir(self) -> Path:
        return self.data_dir / "inputs"


class ServerStopping(Exception):
    """The server is shutting down before a job that a synchronous request waits for could run."""


class Service:
    def __init__(self, settings: ServerSettings, engine: Any) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = JobStore(settings.data_dir / "jobs.sqlite3", max_queue=settings.max_queue)
        self.worker = Worker(engine, self.store, settings.images_dir, self.metrics, max_batch=settings.max_batch,
                             warm=warm_requests(settings.warm))

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

    def submit(self, request: GenerationRequest) -> Job:
        return self.store.add(request)

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

    async def wait(self, job_id: str, *, poll: float = 0.1) -> Job:
        """The job once finished (for the synchronous OpenAI and A1111 APIs).

        Raises ServerStopping if the server stops with the job still queued: the job is cancelled, as its
        client is told to retry (no orphan job runs after the restart).
        """
        while True:
            job = self.store.get(job_id)
            if job is None or job.state in FINISHED:
                return job
            if job.state == "queued" and self.worker.stopping and self.store.cancel(job_id) == "cancelled":
                raise ServerStopping("the server is shutting down; retry later")
            await asyncio.sleep(poll)

    def encoded_image(self, name: str) -> str | None:
        """A result file as base64 (the OpenAI and A1111 APIs return images inline); None if it is gone."""
        path = self.image_path(name)
        return None if path is None else base64.b64encode(path.read_bytes()).decode()

    def image_path(self, name: str) -> Path | None:
        """A result file by name, never outside the images folder."""
        if "/" in name or "\\" in name or name.startswith("."):
            return None
        path = self.settings.images_dir / name
        return path if path.is_file() else None




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
