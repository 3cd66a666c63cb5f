"""A class-conditional model's class names, read from its folder's JSON files without loading it.

The pipelines name their classes from the same `id2label` when loaded; reading it here lets a request's prompt be
checked against the classes before any model loads (no torch, no diffusers).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path


def labels_from(id2label: dict[str, str] | None) -> dict[str, int]:
    """Name -> class id, as DiTPipeline.labels: the entry "7, seven" gives both names."""
    return {name.strip(): int(key) for key, names in (id2label or {}).items() for name in names.split(",")}


def classes_in(folder: Path) -> tuple[dict[str, int], int] | None:
    """(name -> class id, number of classes) of the DiT pipeline in `folder`: model_index.json's id2label and the
    transformer's `num_embeds_ada_norm` (its class embedding's size, the null class excluded); None when the folder
    does not say both. Read again only when a file changes: the server checks every request's prompt."""
    files = (folder / "model_index.json", folder / "transformer" / "config.json")
    try:
        versions = tuple(path.stat().st_mtime_ns for path in files)
    except OSError:
        return None
    return _classes_in(*files, versions)


@functools.lru_cache(maxsize=16)
def _classes_in(index_file: Path, transformer_file: Path,
                versions: tuple[int, ...]) -> tuple[dict[str, int], int] | None:  # noqa: ARG001 - the cache's key
    try:
        index = json.loads(index_file.read_text())
        transformer = json.loads(transformer_file.read_text())
    except (OSError, ValueError):
        return None
    num_classes = transformer.get("num_embeds_ada_norm")
    if not isinstance(index.get("id2label"), dict) or not isinstance(num_classes, int):
        return None
    return labels_from(index["id2label"]), num_classes
