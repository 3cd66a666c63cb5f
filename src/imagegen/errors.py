"""Typed errors: each carries a message a user can act on.

Each class says its CLI exit code and its HTTP status here, once; the CLI and the three server APIs (native,
OpenAI, A1111) only render them, each in its own shape. A 4xx status means the request is at fault and the
client can fix it by changing it; a 5xx status means it was valid and the server failed on it.
"""

from __future__ import annotations


class ImagegenError(Exception):
    """Base of every error imagegen raises on purpose; anything else is a bug."""

    exit_code = 1
    http_status = 500  # not known to be the request's fault
    retry_after_s: int | None = None  # the same request may succeed this much later: the APIs send Retry-After


class InvalidRequest(ImagegenError):
    """A request option is out of range or inconsistent; the message names the option."""

    exit_code = 2
    http_status = 422  # well-formed JSON whose values are wrong: FastAPI's own status for a body that fails validation


class ModelNotFound(ImagegenError):
    """A model is neither on disk nor reachable; the message says where we looked and how to get it."""

    exit_code = 3
    http_status = 404  # the request names a model (or LoRA) the server does not have: the client may name another


class UnsafeWeights(ImagegenError):
    """Weights would be loaded from a pickle file without the user's explicit consent."""

    exit_code = 4
    # Understood, and refused by policy: the client cannot consent to running a pickle's code on the server, it can
    # only name a safetensors model instead.
    http_status = 403


class InvalidImage(ImagegenError):
    """A file given as an image cannot be read as one."""

    exit_code = 2
    http_status = 422  # an uploaded file is a request value like any other


class OutputError(ImagegenError):
    """A result cannot be written where the user asked (missing folder, no permission, a folder in the way)."""

    exit_code = 1
    http_status = 500  # on the server the results folder is the server's own (a full disk): not the client's fault


class Cancelled(ImagegenError):
    """Generation was cancelled between two denoising steps."""

    exit_code = 130
    http_status = 409  # the job was stopped by a cancel (DELETE /v1/jobs/ID, A1111's interrupt): its state says why


class InvalidOutput(ImagegenError):
    """The model produced no usable image: NaN or infinite values (half-precision overflow, a broken LoRA)."""

    exit_code = 1
    # The request passed every check and the model failed on it, most often through the server's choice of precision;
    # the same request (same seed) fails again, which the APIs say with their no-retry hints.
    http_status = 500


class StoreDamaged(ImagegenError):
    """The server's job database cannot be read (truncated, overwritten, corrupted): it says which file, and how to
    start again without losing the results (`imagegen serve --repair`)."""

    exit_code = 5


class StorageFull(ImagegenError):
    """The data folder's disk is full (or the job store cannot be written): nothing new can be kept safely."""

    exit_code = 1
    http_status = 507  # RFC 4918's Insufficient Storage: the server's, not the request's; retry once space is freed
    retry_after_s = 60


class StoreUnavailable(ImagegenError):
    """The job store's database cannot be reached now (a PostgreSQL server restarting): retry shortly."""

    exit_code = 1
    http_status = 503
    retry_after_s = 5


class Notice(UserWarning):
    """Something imagegen did other than asked, and why, in one line: a warning, never an error (the CLI prints it
    as `imagegen: warning: ...`)."""


def error_class(name: str | None) -> type[ImagegenError] | None:
    """The error class of this name (a failed job keeps its error's class name); None for anything else (a bug)."""
    classes = [ImagegenError]
    for cls in classes:
        if cls.__name__ == name:
            return cls
        classes.extend(cls.__subclasses__())
    return None
