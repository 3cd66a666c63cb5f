"""Grids tile a batch row by row into the squarest shape, with background between the tiles."""

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


def test_tiles_sit_gap_pixels_apart_on_the_background() -> None:
    colours = [(i * 40, 100, 200) for i in range(5)]
    tiles = [Image.new("RGB", (40, 30), colour) for colour in colours]
    grid = make_grid(tiles, gap=3, background=(255, 0, 0))
    assert grid.size == (3 * 40 + 2 * 3, 2 * 30 + 3)  # 3x2 for 5 tiles, no margin round the edge
    for i, colour in enumerate(colours):
        row, column = divmod(i, 3)
        left, top = column * 43, row * 33
        for x, y in ((left, top), (left + 39, top + 29)):  # the tile's corners
            assert grid.getpixel((x, y)) == colour
    red = (255, 0, 0)
    for x in (40, 42, 83, 85):  # the columns between tiles
        assert {grid.getpixel((x, y)) for y in range(grid.height)} == {red}
    for y in (30, 32):  # the rows between tiles
        assert {grid.getpixel((x, y)) for x in range(grid.width)} == {red}
    assert grid.getpixel((2 * 43 + 20, 33 + 15)) == red  # the sixth cell, empty


def test_the_default_gap_is_a_32nd_of_a_tile_in_white() -> None:
    grid = make_grid([Image.new("L", (256, 256), 0)] * 4)
    assert grid.size == (2 * 256 + 8, 2 * 256 + 8)
    assert [grid.getpixel((x, 0)) for x in (255, 256, 263, 264)] == [0, 255, 255, 0]
    assert make_grid([Image.new("L", (8, 8), 0)] * 4).getextrema() == (0, 0)  # raw digits: no gap


def test_empty_grid_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        make_grid([])


def test_a_negative_gap_is_an_error() -> None:
    with pytest.raises(ValueError, match="gap must be 0 or more pixels, not -1"):
        make_grid([Image.new("L", (8, 8))], gap=-1)
