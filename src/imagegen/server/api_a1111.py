"""AUTOMATIC1111's web UI API (`/sdapi/v1/...`), so that tools written for A1111 work against imagegen unchanged.

A thin adapter over the job queue: a txt2img/img2img call becomes one job of `batch_size x n_iter` images
(seeds seed, seed + 1, ..., as A1111 gives them), waits for it, and answers as A1111 does: base64 PNGs, the
request echoed as `parameters`, and `info`, the JSON text of A1111's `Processed.js()` (modules/processing.py).

Request fields, A1111 -> GenerationRequest:
    prompt, negative_prompt       -> prompt, negative_prompt
    seed (-1: random)             -> seed
    steps, cfg_scale              -> num_inference_steps, guidance_scale
    width, height                 -> width, height
    batch_size x n_iter           -> num_images
    sampler_name (or sampler_index) and scheduler -> scheduler, by `schedulers.from_a1111`; an old-style name
                                     with the schedule type appended ("DPM++ 2M Karras") is split as A1111 does
    denoising_strength (img2img)  -> strength
    init_images[0], mask          -> init_image, mask_image
    override_settings.sd_model_checkpoint -> recipe
Fields left out take the recipe's defaults, not A1111's (its API would run Euler, 50 steps, CFG 7 at 512x512: wrong
for a 1-step Turbo model or the 256x256 digits model); A1111 clients usually send them anyway. Options imagegen has no
equivalent for (`_UNSUPPORTED`) are refused when set, never silently dropped; the others A1111 clients send along at
their defaults (save_images, do_not_save_grid...) are accepted and echoed. Bodies are JSON sent as application/json,
read once the key was checked, with strict types (`"steps": true` is refused, not one step) and nothing an answer
could not echo (NaN, Infinity, lone surrogates); refusals carry A1111's error body.

A "checkpoint" is a recipe: /sdapi/v1/sd-models lists the image recipes under their names (the title A1111 shows
for a checkpoint without a computed hash), and the default checkpoint set by POST /sdapi/v1/options lives in
memory: a restart returns to the default recipe.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from imagegen.errors import ImagegenError, InvalidRequest
from imagegen.models.schedulers import SCHEDULERS, from_a1111
from imagegen.options import DEFAULT_RECIPE, MAX_IMAGES, OPTIONS
from imagegen.outputs.metadata import parse_infotext
from imagegen.recipes import RECIPES
from imagegen.recipes.base import Recipe
from imagegen.request import GenerationRequest
from imagegen.server.app import answering_route, retry_after
from imagegen.server.bodies import json_body, validation_message
from imagegen.server.keys import Caller
from imagegen.server.service import IDEMPOTENCY_HEADER, JOB_ID_HEADER, Service
from imagegen.server.store import Job
from imagegen.version import __version__

AUTOMATIC = "Automatic"  # A1111's schedule type that means "the sampler's own"
# A1111 options with no imagegen equivalent: refused when set to anything but an empty/false value.
_UNSUPPORTED = ("enable_hr", "restore_faces", "tiling", "subseed_strength", "styles", "script_name",
                "alwayson_scripts", "inpainting_mask_invert", "refiner_checkpoint")
# Infotext keys that info reports in fields of their own; the rest go to extra_generation_params.
_OWN_FIELDS = ("Steps", "Sampler", "CFG scale", "Seed", "Size", "Model", "Denoising strength")


class _A1111Fields(BaseModel):
    """The fields of A1111's body that are not one option of ours (see `_option_fields` for those); types are taken
    strictly, so that `"steps": true` is refused rather than read as one step."""

    model_config = ConfigDict(extra="allow", strict=True)
    subseed: int | None = -1
    batch_size: int = 1
    n_iter: int = 1
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    force_task_id: str | None = None  # A1111's: the task's id, chosen by the client (our job id)


def _option_fields() -> dict[str, Any]:
    """A1111's name and type for each option of the option table that an A1111 body carries."""
    defaults = {"prompt": "", "seed": -1}  # seed -1 or null: random, as A1111's get_fixed_seed
    return {option.a1111: (option.api_kind | None, defaults.get(option.name))
            for option in OPTIONS.values() if option.a1111}


Txt2ImgBody = create_model("Txt2ImgBody", __base__=_A1111Fields, __doc__="/sdapi/v1/txt2img's fields that imagegen "
                           "reads; others are accepted (see `_UNSUPPORTED`) and echoed.", **_option_fields())


class Img2ImgBody(Txt2ImgBody):
    init_images: list[str] | None = None
    mask: str | None = None
    include_init_images: bool = False


@dataclass
class A1111Options:
    """The A1111 settings this server keeps, in memory (a restart returns to the default recipe)."""

    checkpoint: str = DEFAULT_RECIPE


def router(service: Service, auth: Depends) -> APIRouter:
    # Bodies are read in the endpoints, once the key was checked (a dependency), not before as FastAPI would.
    api = APIRouter(prefix="/sdapi/v1", dependencies=[auth], tags=["AUTOMATIC1111"],
                    route_class=answering_route(_answer))
    settings = A1111Options()

    @api.post("/txt2img")
    async def txt2img(request: Request) -> JSONResponse:
        body = Txt2ImgBody.model_validate(await json_body(request))
        return await _generate(service, settings, body, request, init_image=None, mask=None)

    @api.post("/img2img")
    async def img2img(request: Request) -> JSONResponse:
        body = Img2ImgBody.model_validate(await json_body(request))
        if not body.init_images:
            raise InvalidRequest("img2img needs init_images: a list holding one base64 image")
        if len(body.init_images) > 1:
            raise InvalidRequest(f"imagegen takes one init image per request, got {len(body.init_images)}")
        return await _generate(service, settings, body, request, init_image=body.init_images[0], mask=body.mask)

    @api.get("/sd-models")
    def sd_models() -> list[dict[str, Any]]:
        return [{"title": recipe.name, "model_name": recipe.name, "hash": None, "sha256": None,
                 "filename": recipe.models["base"].name, "config": None} for recipe in _image_recipes()]

    @api.get("/samplers")
    def samplers() -> list[dict[str, Any]]:
        # A1111's SamplerItem.options is dict[str, str]; a sampler with a Karras variant says so as A1111 does.
        by_name: dict[str, dict[str, Any]] = {}
        for choice in SCHEDULERS.values():
            entry = by_name.setdefault(choice.a1111_name, {"name": choice.a1111_name, "aliases": [], "options": {}})
            entry["aliases"].append(choice.name)
            if choice.a1111_schedule:
                entry["options"]["scheduler"] = choice.a1111_schedule.lower()
        return list(by_name.values())

    @api.get("/schedulers")
    def schedulers() -> list[dict[str, Any]]:
        return [{"name": _schedule_name(label), "label": label, "aliases": None, "default_rho": None,
                 "need_inner_model": None} for label in _schedule_labels()]

    @api.get("/options")
    def get_options() -> dict[str, Any]:
        return {"sd_model_checkpoint": settings.checkpoint, "sd_checkpoint_hash": None, "samples_format": "png"}

    @api.post("/options")
    async def set_options(request: Request) -> JSONResponse:
        """Sets sd_model_checkpoint; other A1111 settings are not kept, and the answer names them."""
        options = await json_body(request)
        if not isinstance(options, dict):
            raise InvalidRequest("the options must be a JSON object")
        if "sd_model_checkpoint" in options:
            settings.checkpoint = _recipe_for(options["sd_model_checkpoint"]).name
        return JSONResponse({"ignored": sorted(set(options) - {"sd_model_checkpoint"})})

    @api.get("/progress")
    def progress(request: Request) -> dict[str, Any]:
        return _progress(service, request.state.caller)

    @api.post("/interrupt")
    def interrupt(request: Request) -> dict[str, Any]:
        """Stops what runs now (of the caller's jobs) at its next step, as A1111's interrupt does; queued jobs stay
        queued."""
        for job_id in list(service.worker.running):
            if service.job(job_id, request.state.caller) is not None:
                service.cancel(job_id)
        return {}

    return api


async def _generate(service: Service, settings: A1111Options, body: Txt2ImgBody, http: Request, *,
                    init_image: str | None, mask: str | None) -> JSONResponse:
    checkpoint = (body.override_settings or {}).get("sd_model_checkpoint")
    recipe = _recipe_for(checkpoint) if checkpoint else _recipe_for(settings.checkpoint)
    options = _request_options(body, recipe, init_image=init_image, mask=mask)
    request = await asyncio.to_thread(service.request_from_options, options)
    if checkpoint and not body.override_settings_restore_afterwards:
        settings.checkpoint = recipe.name
    job_id = http.headers.get(JOB_ID_HEADER) or body.force_task_id
    submitted = await asyncio.to_thread(lambda: service.submit(request, http.headers.get(IDEMPOTENCY_HEADER),
                                                               caller=http.state.caller, job_id=job_id))
    job = await service.wait(submitted.id)
    if job.state == "failed":
        return _error_response(job.failure_status, job.error_type or "GenerationFailed",
                               job.error or "generation failed")
    try:
        images = await asyncio.to_thread(_encoded_images, service, job) if body.send_images else []
    except FileNotFoundError as error:
        return _error_response(500, "FileNotFoundError", str(error))
    parameters = body.model_dump()
    if isinstance(body, Img2ImgBody):  # A1111 echoes the images only when asked to
        parameters.pop("include_init_images")
        if not body.include_init_images:
            parameters.update(init_images=None, mask=None)
    return JSONResponse({"images": images, "parameters": parameters, "info": _info(body, job)})


def _request_options(body: Txt2ImgBody, recipe: Recipe, *, init_image: str | None,
                     mask: str | None) -> dict[str, Any]:
    """GenerationRequest's options (the native API's names) for an A1111 request."""
    dump = body.model_dump()
    unsupported = [name for name in _UNSUPPORTED if dump.get(name)]
    if unsupported:
        raise InvalidRequest(f"unsupported option(s): {', '.join(unsupported)}; imagegen has no equivalent, "
                             "leave them out or at A1111's default")
    if body.batch_size < 1 or body.n_iter < 1:
        raise InvalidRequest(f"batch_size and n_iter must be at least 1, got {body.batch_size} and {body.n_iter}")
    if body.batch_size * body.n_iter > MAX_IMAGES:
        raise InvalidRequest(f"batch_size x n_iter = {body.batch_size * body.n_iter} images; "
                             f"at most {MAX_IMAGES} per request")
    options = {option.name: dump[option.a1111] for option in OPTIONS.values() if option.a1111}
    options.update(
        recipe=recipe.name,
        seed=None if body.seed in (None, -1) else body.seed,
        num_images=body.batch_size * body.n_iter,
        scheduler=scheduler_for(body.sampler_name or body.sampler_index, body.scheduler),
        init_image=init_image,
        mask_image=mask,
        strength=options["strength"] if init_image is not None else None,
    )
    return options


def scheduler_for(sampler: str | None, schedule: str | None) -> str | None:
    """Our scheduler option for an A1111 sampler and schedule type; None (the recipe's own) without a sampler.

    As A1111's `get_sampler_and_scheduler` (modules/sd_samplers.py), a schedule type appended to the sampler's
    name ("DPM++ 2M Karras", the names before A1111 1.9) wins over the `scheduler` field. Our option names
    ("dpm++2m-karras"), which /samplers lists as aliases, are accepted too.
    """
    label = _schedule_label(schedule)
    if not sampler:
        if label != AUTOMATIC:
            raise InvalidRequest(f"scheduler {schedule!r} needs a sampler_name")
        return None
    if sampler in SCHEDULERS:
        return sampler
    for suffix in _schedule_labels():
        if suffix != AUTOMATIC and sampler.lower().endswith(" " + suffix.lower()):
            sampler, label = sampler[: -len(suffix) - 1], suffix
    name = from_a1111(sampler, label)
    if name is None:
        pairs = ", ".join(f"{choice.a1111_name!r}" + (f" (scheduler {choice.a1111_schedule!r})"
                                                     if choice.a1111_schedule else "")
                          for choice in SCHEDULERS.values())
        schedule_text = f" with scheduler {label!r}" if label != AUTOMATIC else ""
        raise InvalidRequest(f"unknown sampler {sampler!r}{schedule_text}; choose one of {pairs}")
    return name


def _schedule_labels() -> list[str]:
    return list(dict.fromkeys([AUTOMATIC, *(c.a1111_schedule for c in SCHEDULERS.values() if c.a1111_schedule)]))


def _schedule_name(label: str) -> str:
    """A1111 names each schedule type in lower case ("karras"), besides its label ("Karras")."""
    return label.lower().replace(" ", "_")


def _schedule_label(schedule: str | None) -> str:
    if not schedule:
        return AUTOMATIC
    for label in _schedule_labels():
        if schedule in (label, _schedule_name(label)):
            return label
    raise InvalidRequest(f"unknown scheduler {schedule!r}; choose one of {', '.join(_schedule_labels())}")


def _image_recipes() -> list[Recipe]:
    """The recipes A1111's txt2img/img2img can serve: images from a prompt (no videos, no ControlNet)."""
    return [recipe for recipe in RECIPES.values()
            if not (recipe.video or recipe.control or recipe.image_conditioned)]


def _recipe_for(checkpoint: object) -> Recipe:
    for recipe in _image_recipes():
        if checkpoint == recipe.name:
            return recipe
    names = ", ".join(recipe.name for recipe in _image_recipes())
    raise InvalidRequest(f"unknown checkpoint {checkpoint!r}; the A1111 API serves the image recipes: {names}")


def _encoded_images(service: Service, job: Job) -> list[str]:
    images = []
    for result in job.results:
        encoded = service.encoded_image(result["file"])
        if encoded is None:
            raise FileNotFoundError(f"image {result['file']} of job {job.id} is gone from the images folder")
        images.append(encoded)
    return images


def _info(body: Txt2ImgBody, job: Job) -> str:
    """A1111's `Processed.js()` for a finished job: a JSON text, as A1111 sends it."""
    request: GenerationRequest = job.request
    seeds = request.image_seeds()
    infotexts = [result["infotext"] for result in job.results]
    params = parse_infotext(infotexts[0]).params if infotexts else {}
    sampler = params.get("Sampler") or (SCHEDULERS[request.scheduler].a1111_name if request.scheduler else None)
    negative = request.negative_prompt or ""
    subseed = -1 if body.subseed is None else body.subseed
    info = {
        "prompt": body.prompt,
        "all_prompts": [body.prompt] * len(seeds),
        "negative_prompt": negative,
        "all_negative_prompts": [negative] * len(seeds),
        "seed": request.seed,
        "all_seeds": seeds,
        # variation seeds are not supported (subseed_strength is refused): the subseed is echoed, never used
        "subseed": subseed,
        "all_subseeds": [subseed + i if subseed >= 0 else -1 for i in range(len(seeds))],
        "subseed_strength": 0,
        "width": request.width,
        "height": request.height,
        "sampler_name": sampler,
        "cfg_scale": request.guidance_scale,
        "steps": request.num_inference_steps,
        "batch_size": body.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": request.recipe,
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": request.strength if request.strength is not None else 0,
        "extra_generation_params": {key: value for key, value in params.items() if key not in _OWN_FIELDS},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": _timestamp(job.started or job.created),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"imagegen {__version__}",
    }
    return json.dumps(info)


def _progress(service: Service, caller: Caller) -> dict[str, Any]:
    """A1111's /progress for the call running now (if it holds a job of the caller's): its steps done of all, and
    A1111's ETA estimate."""
    running = dict(service.worker.running)
    job = next((job for job in (service.job(job_id, caller) for job_id in running) if job is not None), None)
    if job is None:
        state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
                 "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        return {"progress": 0, "eta_relative": 0, "state": state, "current_image": None, "textinfo": None}
    live = running[job.id]
    fraction = live.done / live.total if live.total else 0.0
    elapsed = time.time() - (job.started or time.time())
    # A1111 counts from 0.01 so that the ETA (elapsed / progress - elapsed) is defined at step 0.
    eta_relative = elapsed / max(fraction, 0.01) - elapsed
    state = {"skipped": False, "interrupted": live.cancel.is_set(), "stopping_generation": False, "job": job.id,
             "job_count": len(running), "job_timestamp": _timestamp(job.started or job.created), "job_no": 0,
             "sampling_step": live.done, "sampling_steps": live.total}
    preview = service.preview(job)  # A1111's current_image: base64 of the latest preview, no data: prefix
    return {"progress": min(fraction, 1.0), "eta_relative": eta_relative, "state": state,
            "current_image": preview[1] if preview else None, "textinfo": None}


def _timestamp(seconds: float) -> str:
    """A1111's job_timestamp: local time as YYYYmmddHHMMSS."""
    return time.strftime("%Y%m%d%H%M%S", time.localtime(seconds))


def _answer(error: Exception) -> JSONResponse | None:
    """A1111's error body for a request refused; None for what the app answers itself (a missing key, a full queue,
    a stopping server) and for bugs."""
    if isinstance(error, ValidationError):
        return _error(InvalidRequest(validation_message(error)))
    return _error(error) if isinstance(error, ImagegenError) else None


def _error(error: ImagegenError) -> JSONResponse:
    return _error_response(error.http_status, type(error).__name__, str(error), retry_after(error))


def _error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A1111's error body (modules/api/api.py, api_middleware): error, detail, body, errors."""
    return JSONResponse({"error": kind, "detail": message, "body": "", "errors": message}, status_code=status,
                        headers=headers)
