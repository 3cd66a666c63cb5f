"""OpenAI's Images API (`POST /v1/images/generations`), so that OpenAI's clients and the tools built on them work
against imagegen unchanged: `openai.OpenAI(base_url="http://HOST:PORT/v1", api_key=KEY).images.generate(...)`.

What a caller may rely on, where we differ from OpenAI or had to choose:

- `model` names a recipe (GET /v1/recipes). Left out, or one of OpenAI's own names (`dall-e-*`, `gpt-image-*`,
  `chatgpt-image-*`), it means the default recipe, so that tools which hard-code OpenAI's names still work; any
  other unknown name is a 400 with code `model_not_found`. Video recipes are refused: their results are not images.
- `size` is "WIDTHxHEIGHT" within request.py's limits (any multiple of 8, not only OpenAI's list), or "auto" /
  left out for the recipe's default size.
- `response_format` defaults to `b64_json`, as for OpenAI's current (GPT image) models. `url` gives an absolute
  URL of the image on this server (`/v1/images/<file>`); fetching it needs the same API key, where OpenAI's
  links are signed and open.
- `output_format` png (default), jpeg or webp is honoured; every file carries imagegen's infotext. gif and svg
  are refused, so is `background: "transparent"` (our recipes draw opaque images) and `stream: true`.
- Accepted and ignored: `quality`, `style`, `moderation`, `output_compression`, `partial_images`, `complexity`
  (no quality tiers or moderation here), `user` and `safety_identifier` (no per-user accounting).
- imagegen's own options ride along as extensions (the client's `extra_body`): `seed` (image i gets seed + i),
  `negative_prompt`, `num_inference_steps`, `guidance_scale`. Any other field is a 400, as OpenAI answers one.
- `revised_prompt` is the prompt the image was made from (LoRA tags taken out); the response also has `size` and
  `output_format`, and the job's id is in the `X-Imagegen-Job` header.
- `GET /v1/models` lists the image recipes as OpenAI models (`client.models.list()`).
- Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}` and the status imagegen's error class
  gives (errors.py), except that an invalid request is OpenAI's 400 where the native API answers 422:
  400 `invalid_request_error` (`param` names the field at fault where we know it; a prompt the recipe cannot read is
  one), 401 `invalid_api_key`, 403 for pickle weights, 404 for a model the server lacks, 415 for a body not sent as
  application/json, 429 `rate_limit_error` with Retry-After when the queue is full (OpenAI's client waits and
  retries). The key is checked before the body is read. A job that fails when it runs answers its
  error's status too (code `job_failed`; 500 `server_error` when the server is at fault), a cancelled one 409
  (`job_cancelled`), both with `x-should-retry: false` so that the client does not run the job again.
- The call waits for its job, which is an ordinary queued job: a client that disconnects loses nothing, the job
  runs and stays in the history (GET /v1/jobs).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from imagegen.errors import ImagegenError, InvalidRequest
from imagegen.options import DEFAULT_RECIPE, OPTIONS
from imagegen.outputs.formats import OUTPUT_FORMATS
from imagegen.recipes import RECIPES
from imagegen.recipes.base import Recipe
from imagegen.server.app import RETRY_AFTER_S, answering_route, retry_after
from imagegen.server.bodies import json_body
from imagegen.server.service import IDEMPOTENCY_HEADER, JOB_ID_HEADER, Service
from imagegen.server.store import Job, QueueFull

OPENAI_MODEL_PREFIXES = ("dall-e-", "gpt-image-", "chatgpt-image-")  # OpenAI's names: they mean the default recipe
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
# Our validation messages start with the option's name; the OpenAI field it came from is the error's `param`.
_PARAM_OF_OPTION = {**{name: option.openai for name, option in OPTIONS.items() if option.openai},
                    "width": "size", "height": "size"}


class _OpenAIFields(BaseModel):
    """OpenAI's fields that are not one option of ours (strict types, unknown fields refused)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = None
    size: str | None = None
    response_format: str | None = None
    background: str | None = None
    stream: bool | None = None
    quality: str | None = None
    style: str | None = None
    moderation: str | None = None
    output_compression: int | None = None
    partial_images: int | None = None
    complexity: str | None = None
    user: str | None = None
    safety_identifier: str | None = None


def _option_fields() -> dict[str, Any]:
    """The OpenAI name and type of each option an OpenAI request carries: OpenAI's own (prompt, n, output_format)
    and imagegen's extensions (seed, negative_prompt, ...), from the option table."""
    return {option.openai: (option.kind, ...) if option.name == "prompt" else (option.api_kind | None, None)
            for option in OPTIONS.values() if option.openai}


ImageGenerationBody = create_model("ImageGenerationBody", __base__=_OpenAIFields, **_option_fields(),
                                   __doc__="OpenAI's request body, with imagegen's extensions.")


class OpenAIError(Exception):
    """An error to answer in OpenAI's shape; its type follows from the status unless given."""

    def __init__(self, status: int, message: str, *, kind: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status, headers=self.headers)


def _openai_answer(error: Exception) -> JSONResponse | None:
    """Every failure of an OpenAI route, authentication and body validation included, in OpenAI's shape."""
    translated = openai_error(error)
    return None if translated is None else translated.response()


def openai_error(error: Exception) -> OpenAIError | None:
    """The OpenAI answer to an error raised while serving a request; None for a bug (a plain 500)."""
    if isinstance(error, OpenAIError):
        return error
    if isinstance(error, QueueFull):
        return OpenAIError(429, f"{error}; retry later", kind="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(error, ValidationError):
        problem = error.errors(include_url=False)[0]
        location = problem["loc"]  # (field name, ...) for a field; () for a body that is no JSON object
        field = location[0] if location and isinstance(location[0], str) else None
        if problem["type"] == "extra_forbidden":
            return OpenAIError(400, f"Unrecognized request argument supplied: {field}", param=field)
        return OpenAIError(400, f"{field}: {problem['msg']}" if field else problem["msg"], param=field)
    if isinstance(error, HTTPException):
        return OpenAIError(error.status_code, str(error.detail), headers=error.headers,
                           code="invalid_api_key" if error.status_code == 401 else None)
    if isinstance(error, ImagegenError):
        option = re.match(r"[a-z_]+", str(error))
        return OpenAIError(_openai_status(error.http_status), str(error),
                           param=_PARAM_OF_OPTION.get(option.group() if option else ""), headers=retry_after(error))
    return None


def _openai_status(status: int) -> int:
    """OpenAI answers every invalid request 400 (its clients raise BadRequestError), where imagegen's is 422."""
    return 400 if status == InvalidRequest.http_status else status


def router(service: Service, auth: Depends) -> APIRouter:
    api = APIRouter(route_class=answering_route(_openai_answer), dependencies=[auth])

    @api.post("/v1/images/generations")
    async def generations(request: Request) -> JSONResponse:
        body = ImageGenerationBody.model_validate(await json_body(request))  # read once the key was checked
        response_format = body.response_format or "b64_json"
        options = generation_options(body)
        key, job_id = request.headers.get(IDEMPOTENCY_HEADER), request.headers.get(JOB_ID_HEADER)
        job = await asyncio.to_thread(lambda: service.submit(service.request_from_options(options), key,
                                                             caller=request.state.caller, job_id=job_id))
        finished = await service.wait(job.id)
        content = await asyncio.to_thread(images_response, service, finished, response_format, str(request.base_url))
        return JSONResponse(content, headers={"X-Imagegen-Job": job.id})

    @api.get("/v1/models")
    def models() -> dict[str, Any]:
        """OpenAI's model list, which tools read to fill their model menus: the recipes that make images."""
        return {"object": "list", "data": [{"id": recipe.name, "object": "model", "created": 0, "owned_by": "imagegen"}
                                           for recipe in RECIPES.values() if not recipe.video]}

    return api


def recipe_for(model: str | None) -> Recipe:
    """The recipe an OpenAI `model` names (see the module's docstring)."""
    if not model or model.startswith(OPENAI_MODEL_PREFIXES):
        return RECIPES[DEFAULT_RECIPE]
    recipe = RECIPES.get(model)
    if recipe is None:
        raise OpenAIError(400, f"unknown model {model!r}: name one of the recipes {', '.join(RECIPES)} (OpenAI's own "
                          f"model names mean {DEFAULT_RECIPE})", param="model", code="model_not_found")
    if recipe.video:
        raise OpenAIError(400, f"recipe {model} makes videos, which the Images API cannot return; "
                          "use POST /v1/jobs", param="model")
    return recipe


def generation_options(body: ImageGenerationBody) -> dict[str, Any]:
    """The native request options (GenerationRequest's names) for an OpenAI request; limits are checked later."""
    if body.response_format not in (None, "b64_json", "url"):
        raise OpenAIError(400, f"response_format must be 'b64_json' or 'url', got {body.response_format!r}",
                          param="response_format")
    if body.output_format not in (None, *OUTPUT_FORMATS):
        raise OpenAIError(400, f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, "
                          f"got {body.output_format!r}", param="output_format")
    if body.background == "transparent":
        raise OpenAIError(400, "transparent backgrounds are not supported: the recipes draw opaque images",
                          param="background")
    if body.stream:
        raise OpenAIError(400, "streaming is not supported; follow a job's progress at /v1/jobs/{id}/events",
                          param="stream")
    recipe = recipe_for(body.model)
    width = height = None
    if body.size not in (None, "auto"):
        match = _SIZE.match(body.size)
        if match is None:
            raise OpenAIError(400, f"size must be 'auto' or WIDTHxHEIGHT such as '256x256', got {body.size!r}",
                              param="size")
        width, height = int(match[1]), int(match[2])
    options = {option.name: getattr(body, option.openai) for option in OPTIONS.values() if option.openai}
    options.update(recipe=recipe.name, width=width, height=height)
    return {name: value for name, value in options.items() if value is not None}


def images_response(service: Service, job: Job, response_format: str, base_url: str) -> dict[str, Any]:
    """OpenAI's ImagesResponse for a finished job; a failed or cancelled job is an error the client should not retry,
    with the status of its failure (Job.failure_status)."""
    if job.state != "done":
        reason = f"job {job.id} failed: {job.error}" if job.state == "failed" else f"job {job.id} was cancelled"
        raise OpenAIError(_openai_status(job.failure_status), reason, code=f"job_{job.state}",
                          headers={"x-should-retry": "false"})
    data = []
    for result in job.results:
        if response_format == "url":
            image = {"url": f"{base_url}v1/images/{result['file']}"}
        else:
            encoded = service.encoded_image(result["file"])
            if encoded is None:
                raise OpenAIError(500, f"image {result['file']} of job {job.id} is gone",
                                  headers={"x-should-retry": "false"})
            image = {"b64_json": encoded}
        data.append({**image, "revised_prompt": job.request.prompt})
    return {"created": int(job.finished or job.created), "data": data,
            "size": f"{job.request.width}x{job.request.height}", "output_format": job.request.output_format}
