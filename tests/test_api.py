"""The Python entry point: `imagegen.generate`."""

from __future__ import annotations

import numpy as np
import pytest

import imagegen
from imagegen.errors import InvalidRequest


def test_generate_defaults_to_the_built_in_model() -> None:
    images = imagegen.generate("3", seed=8, num_images=2, width=8, height=8)
    assert [image.seed for image in images] == [8, 9]
    assert images[0].image.size == (8, 8)
    again = imagegen.generate("three", recipe="digits", seed=9, width=8, height=8)
    np.testing.assert_array_equal(np.asarray(again[0].image), np.asarray(images[1].image))


def test_unknown_options_are_named() -> None:
    with pytest.raises(InvalidRequest, match="unknown option.*steps"):
        imagegen.generate("3", steps=4)
