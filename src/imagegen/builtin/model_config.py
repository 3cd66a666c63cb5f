"""The JSON configs of a model folder, read without diffusers.

The built-in model keeps diffusers' folder format (config.json, scheduler_config.json) so that
diffusers can still load it; this module reads those files for imagegen's own, lighter classes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ModelConfig(dict):
    """A config as diffusers hands it out: a mapping whose keys also read as attributes (`config.sample_size`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def read_config(path: Path) -> ModelConfig:
    """The config in `path` (a JSON file)."""
    return ModelConfig(json.loads(path.read_text()))


def merged(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> ModelConfig:
    """`defaults` overridden by the entries of `given` that they name; other entries of `given` are kept too."""
    return ModelConfig({**defaults, **given})
