"""Class-conditional prompts: a class name or id in, the model's class id out, and the check of a request's prompt
against the model's classes before the model loads."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from imagegen.errors import InvalidRequest
from imagegen.models.class_names import classes_in
from imagegen.models.sources import LocalModel, ModelRef, find_cached

_LIST_ALL_BELOW = 30  # models with this few classes are listed whole in errors; larger ones get suggestions


def class_id(prompt: str, labels: Mapping[str, int], num_classes: int) -> int:
    """`prompt` as a class: an id ("207") or one of the model's names ("golden retriever"), any case."""
    text = " ".join(prompt.split()).lower()
    problem = f"knows no class {prompt!r}" if text else "needs a class as its prompt"
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
        raise InvalidRequest(f"this model {problem}; it knows {known}")
    close = difflib.get_close_matches(text, by_name, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise InvalidRequest(
        f"this model {problem}: give a class id 0-{num_classes - 1} or one of its "
        f"{len(labels)} class names.{hint}"
    )


def check_class_prompt(prompt: str, model: ModelRef | LocalModel | None) -> None:
    """A Recipe.check_prompt: refuse a prompt that names none of the model's classes, reading them from the model's
    folder on disk. A model not on this machine yet (or one the request gives) has classes known only once it is
    fetched and loaded: then only an empty prompt is refused here, and the pipeline checks the rest."""
    folder = model.path if isinstance(model, LocalModel) else find_cached(model) if model is not None else None
    classes = classes_in(folder) if folder is not None else None
    if classes is not None:
        class_id(prompt, *classes)
    elif not prompt.strip():
        raise InvalidRequest("this model needs a class as its prompt: a class id or one of its class names")
