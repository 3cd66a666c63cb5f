"""What a request may name on the server's disk: nothing outside the folders the server was given.

Images arrive as base64 (or uploads), are checked as images (format, pixel count from the header, before
decoding) and stored under the server's inputs folder; models are hub ids or names inside --models-dir.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import uuid
from pathlib import Path

from imagegen.errors import InvalidImage, InvalidRequest
from imagegen.inputs import MAX_INPUT_PIXELS

ACCEPTED_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)*$")
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,")


def store_image(data: str | bytes, folder: Path, *, what: str) -> str:
    """Check an uploaded image (base64 text, optionally a data: URL, or raw bytes) and keep it; returns its path."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, str):
        try:
            data = base64.b64decode(_DATA_URL.sub("", data.strip()), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{what}: not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
    except Image.DecompressionBombError:
        raise InvalidImage(f"{what} is far too large; at most {MAX_INPUT_PIXELS} pixels are accepted") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidImage(f"{what} is not an image") from None
    if kind not in ACCEPTED_FORMATS:
        raise InvalidImage(f"{what}: {kind} images are not accepted; send {', '.join(ACCEPTED_FORMATS)}")
    if width * height > MAX_INPUT_PIXELS:
        raise InvalidImage(f"{what} is {width}x{height}; at most {MAX_INPUT_PIXELS} pixels are accepted")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}{ACCEPTED_FORMATS[kind]}"
    path.write_bytes(data)
    return str(path)


def checked_model(value: str, models_dir: Path | None) -> str:
    """A hub id, or a model folder/file inside `models_dir` (as a path the engine can load)."""
    if models_dir is not None and not Path(value).is_absolute() and ".." not in Path(value).parts:
        candidate = (models_dir / value).resolve()
        if candidate.exists():
            if not candidate.is_relative_to(models_dir.resolve()):
                raise InvalidRequest(f"model {value!r} leads out of the server's models folder")
            return str(candidate)
    # The engine tries a local path before a hub id: a hub id that names something here (relative to the
    # server's working directory) would load that instead.
    if _HUB_ID.match(value) and ".." not in value.split("/") and not Path(value).exists():
        return value
    raise InvalidRequest(f"model {value!r}: name a hub id (org/name) or a model in the server's models folder")


def discard_inputs(*paths: str | None) -> None:
    """Remove uploaded images once nothing needs them: the request was refused, or its job ended (a job that
    may still run again after a crash keeps them)."""
    for path in paths:
        if path:
            Path(path).unlink(missing_ok=True)
