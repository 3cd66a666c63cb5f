"""Typed errors: each carries a message a user can act on.

The CLI maps them to exit codes and the server (later) to HTTP statuses, in one place each.
"""


class ImagegenError(Exception):
    """Base of every error imagegen raises on purpose; anything else is a bug."""

    exit_code = 1


class InvalidRequest(ImagegenError):
    """A request option is out of range or inconsistent; the message names the option."""

    exit_code = 2


class ModelNotFound(ImagegenError):
    """A model is neither on disk nor reachable; the message says where we looked and how to get it."""

    exit_code = 3


class UnsafeWeights(ImagegenError):
    """Weights would be loaded from a pickle file without the user's explicit consent."""

    exit_code = 4


class InvalidImage(ImagegenError):
    """A file given as an image cannot be read as one."""

    exit_code = 2


class OutputError(ImagegenError):
    """A result cannot be written where the user asked (missing folder, no permission, a folder in the way)."""

    exit_code = 1


class Cancelled(ImagegenError):
    """Generation was cancelled between two denoising steps."""

    exit_code = 130


class InvalidOutput(ImagegenError):
    """The model produced no usable image: NaN or infinite values (half-precision overflow, a broken LoRA)."""

    exit_code = 1
