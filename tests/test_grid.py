"""Grids tile a batch row by row into the squarest shape."""

from __future__ import annotations

import pytest
from PIL import Image

from imagegen.outputs.grid import make_grid


@pytest.mark.parametrize(("count", "size"), [(1, (8, 8)), (4, (16, 16)), (6, (24, 16)), (16, (32, 32))])
def test_grid_shape(count, size) -> None:
    tiles = [Image.new("L", (8, 8), color=i * 10) for i in range(count)]
    grid = make_grid(tiles)
    assert grid.size == size
    columns = size[0] // 8
    for i in range(count):
        row, column = divmod(i, columns)
        assert grid.getpixel((column * 8 + 3, row * 8 + 3)) == i * 10


def test_empty_grid_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        make_grid([])
