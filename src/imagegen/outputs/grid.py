"""Contact sheets: several images of one request tiled into one, as A1111 saves beside a batch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


def make_grid(images: list[Image.Image], *, gap: int = 0) -> Image.Image:
    """Tile images row by row into the squarest grid that holds them all (16 -> 4x4, 6 -> 3x2)."""
    from PIL import Image

    if not images:
        raise ValueError("a grid needs at least one image")
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    sheet = Image.new(images[0].mode, (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap))
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        sheet.paste(image, (column * (width + gap), row * (height + gap)))
    return sheet
