"""The FastAPI application: the native job API, health and metrics, authentication, and the other APIs' routers."""

from __future__ import annotations

import asyncio
import json
import mimetypes
from base64 import b64decode
from collections.abc import Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict, fields
from typing import Any, get_type_hints

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from imagegen.errors import ImagegenError, InvalidRequest
from imagegen.options import OPTIONS
from imagegen.request import GenerationRequest
from imagegen.server.arrivals import CountArrivals
from imagegen.server.bodies import (
    json_body,
    media_type_of,
    parse_json,
    validation_message,
)
from imagegen.server.changes import wait_for
from imagegen.server.gate import RequestGate
from imagegen.server.keys import OPERATOR, caller_for
from imagegen.server.service import (
    CHANGE_WAIT_S,
    IDEMPOTENCY_HEADER,
    IMAGE_FIELDS,
    JOB_ID_HEADER,
    ServerStopping,
    Service,
)
from imagegen.server.store import FINISHED, Job, QueueFull
from imagegen.server.webhooks import Webhook

RETRY_AFTER_S = 5
STOPPING_DETAIL = "the server is shutting down; the job stays queued and runs after the restart"
MAX_HISTORY_OFFSET = 2**63 - 1  # SQLite's largest integer: a larger offset would be an OverflowError, not an empty page
MAX_HISTORY_LIMIT = 200
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")  # POST /v1/jobs takes its options as a form too


class LoraItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    weight: float = 1.0


class WebhookItem(BaseModel):
    """A job's webhook: the URL told when the job starts (events "started") and ends ("finished", the default)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    url: str
    events: list[str] = ["finished"]


def _webhook(value: str | dict[str, Any] | None) -> Webhook | None:
    if value is None:
        return None
    return Webhook(value) if isinstance(value, str) else Webhook(value["url"], tuple(value.get("events", ())))


def _job_body() -> type[BaseModel]:
    """POST /v1/jobs: GenerationRequest's options by name, with its types (derived, so the two never drift) taken
    strictly (`true` is no step count, "5" no number); images as base64; LoRAs as "name:weight" or {name, weight}.
    Other names pass through, so that the answer can list every unknown option at once."""
    hints = get_type_hints(GenerationRequest)
    options: dict[str, Any] = {f.name: (hints[f.name], f.default) for f in fields(GenerationRequest)}
    options.update(prompt=(str, ""), recipe=(str | None, None), loras=(list[str | LoraItem] | None, None),
                   webhook=(str | WebhookItem | None, None))
    options.update({name: (option.api_kind | None, None) for name, option in OPTIONS.items()
                    if option.api_kind is not option.kind})  # `"fast": true`
    return create_model("JobBody", __config__=ConfigDict(extra="allow", strict=True), **options)


JobBody = _job_body()


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI's protocol
        service.worker.start()
        yield
        # The running call finishes within the grace, else it stops and its jobs go back to the queue.
        await asyncio.to_thread(service.worker.shutdown, service.settings.shutdown_grace_s)

    # No /docs, /redoc or /openapi.json: Swagger's page loads from a CDN, and the schema is not the key-free kind.
    app = FastAPI(title="imagegen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.add_middleware(CountArrivals, arrivals=service.arrivals)  # inside the gate: refused requests never count
    app.add_middleware(RequestGate, limit=service.settings.max_body_bytes,
                       local_names=None if service.settings.api_key else _local_names(service))
    app.exception_handler(ImagegenError)(_imagegen_error)
    app.exception_handler(QueueFull)(_queue_full)
    app.exception_handler(ServerStopping)(_server_stopping)
    app.exception_handler(ClientDisconnect)(_client_gone)
    auth = Depends(_authenticated(service))
    from imagegen.server import api_a1111, api_openai, web

    for module in (api_openai, api_a1111, web):
        app.include_router(module.router(service, auth))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        reason = service.not_ready()
        return JSONResponse({"ready": reason is None, **({"reason": reason} if reason else {})},
                            status_code=200 if reason is None else 503)

    @app.get("/metrics", dependencies=[auth])
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.exposition(service.store.counts()).decode(),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/recipes", dependencies=[auth])
    def recipes() -> list[dict[str, Any]]:
        """"ready": every file the recipe loads in the server's precision is on disk (else the first job downloads
        them, or fails offline; `imagegen pull NAME` fetches them ahead)."""
        from imagegen.options import DEFAULT_RECIPE, FAST_METHODS
        from imagegen.recipes import RECIPES

        return [{"name": recipe.name, "summary": recipe.summary, "video": recipe.video,
                 "default": recipe.name == DEFAULT_RECIPE,
                 "ready": service.worker.engine.is_ready(recipe),
                 "fast": {name: FAST_METHODS[name] for name in recipe.fast_methods},  # the `fast` methods it takes
                 "models": {role: model.name for role, model in recipe.models.items()},
                 "defaults": {key: value for key, value in asdict(recipe.defaults).items() if value is not None}}
                for recipe in RECIPES.values()]

    @app.post("/v1/jobs", status_code=202, dependencies=[auth])
    async def submit(request: Request) -> dict[str, Any]:
        """A JSON body (images as base64), or a form: an `options` field holding that JSON and, in
        multipart/form-data, the images as files named init_image, mask_image, control_image."""
        options = await _job_options(request)
        webhook = _webhook(options.pop("webhook", None))
        key, job_id = request.headers.get(IDEMPOTENCY_HEADER), request.headers.get(JOB_ID_HEADER)
        return await asyncio.to_thread(  # database work: off the event loop
            lambda: job_view(service, service.submit(service.request_from_options(options), key, webhook,
                                                     caller=request.state.caller, job_id=job_id)))

    @app.get("/v1/jobs", dependencies=[auth])
    def history(request: Request, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """A page of the history (the caller's jobs; the operator's: every job), newest first; offset and limit are
        clamped to what the store can answer."""
        offset, limit = max(0, min(offset, MAX_HISTORY_OFFSET)), max(1, min(limit, MAX_HISTORY_LIMIT))
        jobs = service.store.list(offset=offset, limit=limit, owner=request.state.caller.name)
        return {"jobs": [job_view(service, job) for job in jobs],
                "offset": offset, "limit": limit}

    @app.get("/v1/jobs/{job_id}", dependencies=[auth])
    def job(job_id: str, request: Request) -> dict[str, Any]:
        return job_view(service, _existing(service, job_id, request))

    @app.delete("/v1/jobs/{job_id}", dependencies=[auth])
    def cancel(job_id: str, request: Request) -> dict[str, Any]:
        _existing(service, job_id, request)
        service.cancel(job_id)
        return job_view(service, _existing(service, job_id, request))

    @app.get("/v1/jobs/{job_id}/events", dependencies=[auth])
    async def events(job_id: str, request: Request) -> StreamingResponse:
        await asyncio.to_thread(_existing, service, job_id, request)
        return StreamingResponse(_event_stream(service, job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/v1/images/{name}", dependencies=[auth])
    def image(name: str, request: Request) -> FileResponse:
        path = service.image_path(name, request.state.caller)
        if path is not None:
            return FileResponse(path)
        data = service.image_bytes(name, request.state.caller)  # kept in the store (--results-in-db)
        if data is None:
            raise HTTPException(404, f"no image {name!r}")
        return Response(data, media_type=mimetypes.guess_type(name)[0] or "application/octet-stream")

    return app


def job_view(service: Service, job: Job) -> dict[str, Any]:
    """A job as the native API shows it."""
    return {
        "id": job.id,
        "state": job.state,
        "position": service.store.position(job.id),
        "progress": service.progress(job),
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "recipe": job.request.recipe,
        "prompt": job.request.prompt,
        "seed": job.request.seed,
        "images": [{"url": f"/v1/images/{result['file']}", "seed": result["seed"], "infotext": result["infotext"]}
                   for result in job.results],
        "error": job.error,
        "webhook": None if job.webhook is None else {
            "url": job.webhook.url, "events": list(job.webhook.events),
            "deliveries": [{"event": delivery.event, "state": delivery.state, "attempts": delivery.attempts,
                            "error": delivery.error} for delivery in service.store.deliveries(job.id)]},
    }


async def _event_stream(service: Service, job_id: str):  # noqa: ANN202 - an async generator of SSE lines
    """queued (with position) -> step i of n, with a `preview` event (step, base64 JPEG) whenever a new preview is
    made -> done | failed | cancelled, each sent when it changes; or, when the server stops with the job queued,
    "stopping" (the job stays queued and runs after the restart)."""
    last = None
    last_preview = None
    while True:
        change = service.changes.next_change(job_id)
        job, view = await asyncio.to_thread(_job_and_view, service, job_id)  # database reads: off the event loop
        if job.state == "queued" and service.worker.stopping:
            yield f"event: stopping\ndata: {json.dumps({'detail': STOPPING_DETAIL})}\n\n"
            return
        event = ("queued", {"position": view["position"]}) if job.state == "queued" else \
            ("progress", view["progress"]) if job.state == "running" else (job.state, view)
        if event != last:
            yield f"event: {event[0]}\ndata: {json.dumps(event[1])}\n\n"
            last = event
        preview = service.preview(job) if job.state == "running" else None
        if preview is not None and preview != last_preview:
            yield f"event: preview\ndata: {json.dumps({'step': preview[0], 'jpeg': preview[1]})}\n\n"
            last_preview = preview
        if job.state in FINISHED:
            change.cancel()
            return
        await wait_for(change, CHANGE_WAIT_S)


def _job_and_view(service: Service, job_id: str) -> tuple[Job, dict[str, Any]]:
    job = service.store.get(job_id)
    return job, job_view(service, job)


async def _job_options(request: Request) -> dict[str, Any]:
    if media_type_of(request) in FORMS:
        form = await request.form()
        field = form.get("options") or "{}"
        if isinstance(field, UploadFile):
            raise InvalidRequest("the form's `options` must be a plain field holding JSON, not a file")
        options = await asyncio.to_thread(parse_json, field, "the form's `options` field")
        uploads = {name: await form[name].read() for name in IMAGE_FIELDS if isinstance(form.get(name), UploadFile)}
    else:
        options, uploads = await json_body(request), {}
    if not isinstance(options, dict):
        raise InvalidRequest("the job options must be a JSON object")
    try:
        return {**JobBody.model_validate(options).model_dump(exclude_unset=True), **uploads}
    except ValidationError as error:
        raise InvalidRequest(validation_message(error)) from None


def answering_route(answer: Callable[[Exception], Response | None]) -> type[APIRoute]:
    """A route class whose every failure, authentication and body parsing included, `answer` renders in its API's
    own shape; an error it returns None for goes on to the app's handlers (and a bug to a plain 500)."""

    class AnsweringRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def answered(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as error:  # noqa: BLE001 - re-raised below unless `answer` renders it
                    response = answer(error)
                    if response is None:
                        raise
                    return response

            return answered

    return AnsweringRoute


def _existing(service: Service, job_id: str, request: Request) -> Job:
    """The job, if the caller may see it; a job of another user's is as absent as one that never was."""
    job = service.job(job_id, request.state.caller)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


def _authenticated(service: Service):  # noqa: ANN202 - a FastAPI dependency
    """Bearer tokens (OpenAI's clients) and HTTP basic auth with the key as password (A1111's --api-auth). The caller
    the key names goes to `request.state.caller`, which the routes read (never defaulted: a route without the check
    fails rather than show every job)."""
    settings = service.settings

    async def check(request: Request) -> None:  # async: a check this cheap costs more in a thread than on the loop
        if not settings.keyed:
            request.state.caller = OPERATOR
            return
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        given = ""
        if scheme.lower() == "bearer":
            given = credentials.strip()
        elif scheme.lower() == "basic":
            try:
                given = b64decode(credentials).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                given = ""
        caller = caller_for(given, settings.api_key, settings.user_keys)
        if caller is None:
            raise HTTPException(401, "a valid API key is needed (Authorization: Bearer KEY)",
                                headers={"WWW-Authenticate": 'Bearer, Basic realm="imagegen"'})
        request.state.caller = caller

    return check


def _local_names(service: Service) -> set[str]:
    return {"localhost", "127.0.0.1", "::1", service.settings.host, *(name.lower() for name in
                                                                     service.settings.allowed_hosts)}


async def _imagegen_error(request: Request, error: ImagegenError) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=error.http_status, headers=retry_after(error))


def retry_after(error: ImagegenError) -> dict[str, str]:
    """The Retry-After header of an error that passes (a full disk), for every API's answer."""
    return {"Retry-After": str(error.retry_after_s)} if error.retry_after_s else {}


async def _client_gone(request: Request, error: ClientDisconnect) -> Response:
    """A client that hangs up halfway through its body gets no answer; this one keeps a traceback out of the log."""
    return Response(status_code=400)


async def _server_stopping(request: Request, error: ServerStopping) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


async def _queue_full(request: Request, error: QueueFull) -> JSONResponse:
    return JSONResponse({"detail": f"{error}; retry later"}, status_code=429,
                        headers={"Retry-After": str(RETRY_AFTER_S)})
