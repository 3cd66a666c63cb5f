"""Read images given as inputs (init images, masks), refusing anything that is not a sane image."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from imagegen.errors import InvalidImage

if TYPE_CHECKING:
    from PIL import Image

MAX_INPUT_PIXELS = 4096 * 4096  # the largest image a request may produce; larger inputs are refused undecoded


def load_image(path: str | Path, *, what: str, mode: str = "RGB") -> Image.Image:
    """Open, check and decode an input image; `what` names it in errors ("init image", "mask").

    The size is read from the header before any pixel is decoded, so a decompression bomb is refused
    without being expanded.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_INPUT_PIXELS:
                raise InvalidImage(f"{what} {path} is {width}x{height}; at most {MAX_INPUT_PIXELS} pixels are accepted")
            image.load()
            return image.convert(mode)
    except Image.DecompressionBombError:  # Pillow's own guard, before the header check above is reached
        raise InvalidImage(f"{what} {path} is far too large; at most {MAX_INPUT_PIXELS} pixels are accepted") from None
    except FileNotFoundError:
        raise InvalidImage(f"{what} {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImage(f"{what} {path} cannot be read as an image: {error}") from None
