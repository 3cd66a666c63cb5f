"""Contact sheets: several images of one request tiled into one, as A1111 saves beside a batch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


def make_grid(images: list[Image.Image], *, gap: int | None = None,
              background: str | int | tuple[int, ...] = "white") -> Image.Image:
    """Tile images row by row into the squarest grid that holds them all (16 -> 4x4, 6 -> 3x2).

    ``gap`` pixels of ``background`` separate neighbouring tiles (none around the edge). The default is a
    32nd of the tile's width: 8 pixels between 256-pixel tiles, none between raw 8x8 digits, which then
    tile into one picture of their pixels.
    """
    from PIL import Image

    if not images:
        raise ValueError("a grid needs at least one image")
    width, height = images[0].size
    gap = width // 32 if gap is None else gap
    if gap < 0:
        raise ValueError(f"a grid's gap must be 0 or more pixels, not {gap}")
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    size = (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap)
    sheet = Image.new(images[0].mode, size, background)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        sheet.paste(image, (column * (width + gap), row * (height + gap)))
    return sheet
