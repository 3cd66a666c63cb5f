"""Read images given as inputs (init images, masks), refusing anything that is not a sane image."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from imagegen.errors import InvalidImage

if TYPE_CHECKING:
    from PIL import Image

_ORIENTATION = 0x0112  # EXIF tag; values 5-8 store the picture turned by a quarter
_QUARTER_TURNS = (5, 6, 7, 8)
MAX_INPUT_PIXELS = 4096 * 4096  # the largest image a request may produce; larger inputs are refused undecoded


def load_image(path: str | Path, *, what: str, mode: str = "RGB") -> Image.Image:
    """Open, check and decode an input image; `what` names it in errors ("init image", "mask").

    The size is read from the header before any pixel is decoded, so a decompression bomb is refused
    without being expanded.
    """
    from PIL import ImageOps

    with _opened(path, what) as image:
        image.load()
        # Upright as the camera meant it (a phone's portrait photo is stored sideways), as diffusers'
        # load_image and A1111 do.
        return ImageOps.exif_transpose(image).convert(mode)


def image_size(path: str | Path, *, what: str) -> tuple[int, int]:
    """An input image's (width, height), from its header only, with the checks of `load_image`."""
    with _opened(path, what) as image:
        width, height = image.size
        return (height, width) if image.getexif().get(_ORIENTATION, 1) in _QUARTER_TURNS else (width, height)


@contextmanager
def _opened(path: str | Path, what: str) -> Iterator[Image.Image]:
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    try:
        image = Image.open(path)
    except Image.DecompressionBombError:  # Pillow's own guard, before the header check below is reached
        raise InvalidImage(f"{what} {path} is far too large; at most {MAX_INPUT_PIXELS} pixels are accepted") from None
    except FileNotFoundError:
        raise InvalidImage(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidImage(f"{what} {path} is a folder, not an image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImage(f"{what} {path} cannot be read as an image: {error}") from None
    with image:
        width, height = image.size
        if width * height > MAX_INPUT_PIXELS:
            raise InvalidImage(f"{what} {path} is {width}x{height}; at most {MAX_INPUT_PIXELS} pixels are accepted")
        try:
            yield image
        except (OSError, SyntaxError, ValueError, struct.error) as error:  # truncated data, a mode with no conversion
            raise InvalidImage(f"{what} {path} cannot be read as an image: {error}") from None
