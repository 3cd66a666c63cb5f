"""Class-conditional prompts resolve to class ids, and anything else is an error that helps."""

from __future__ import annotations

import pytest

from imagegen.errors import InvalidRequest
from imagegen.recipes.class_labels import class_id

DIGITS = {name: i for i, word in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven",
                                             "eight", "nine"])
          for name in (str(i), word, f"digit {i}", f"digit {word}")}


@pytest.mark.parametrize("prompt", ["7", "seven", "digit 7", "Digit  Seven", " SEVEN "])
def test_names_ids_and_spacing_variants(prompt) -> None:
    assert class_id(prompt, DIGITS, 10) == 7


def test_small_label_sets_are_listed_whole_in_the_error() -> None:
    with pytest.raises(InvalidRequest) as error:
        class_id("a cat", DIGITS, 10)
    assert "knows no class 'a cat'" in str(error.value)
    assert "7: 7, seven, digit 7, digit seven" in str(error.value)


def test_large_label_sets_suggest_close_names() -> None:
    labels = {f"class{i}": i for i in range(1000)} | {"golden retriever": 207}
    assert class_id("999", labels, 1000) == 999
    with pytest.raises(InvalidRequest, match="class id 0-999.*Did you mean 'golden retriever'"):
        class_id("golden retreiver", labels, 1000)
    with pytest.raises(InvalidRequest, match="class id 0-999"):
        class_id("1000", labels, 1000)


def test_unicode_digits_are_not_ids() -> None:
    with pytest.raises(InvalidRequest, match="knows no class"):
        class_id("²", DIGITS, 10)
