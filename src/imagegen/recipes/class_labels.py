"""Class-conditional prompts: a class name or id in, the model's class id out."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from imagegen.errors import InvalidRequest

_LIST_ALL_BELOW = 30  # models with this few classes are listed whole in errors; larger ones get suggestions


def class_id(prompt: str, labels: Mapping[str, int], num_classes: int) -> int:
    """`prompt` as a class: an id ("207") or one of the model's names ("golden retriever"), any case."""
    text = " ".join(prompt.split()).lower()
    if text.isdecimal() and text.isascii() and int(text) < num_classes:
        return int(text)
    by_name = {name.lower(): index for name, index in labels.items()}
    if text in by_name:
        return by_name[text]
    if num_classes <= _LIST_ALL_BELOW:
        names: dict[int, list[str]] = {}
        for name, index in labels.items():
            names.setdefault(index, []).append(name)
        known = "; ".join(f"{index}: {', '.join(sorted(names[index], key=len))}" for index in sorted(names))
        raise InvalidRequest(f"this model knows no class {prompt!r}; it knows {known}")
    close = difflib.get_close_matches(text, by_name, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise InvalidRequest(
        f"this model knows no class {prompt!r}: give a class id 0-{num_classes - 1} or one of its "
        f"{len(labels)} class names.{hint}"
    )
