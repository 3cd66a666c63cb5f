"""Known-bad model configs, loaded as their authors meant them instead of failing deep inside diffusers.

While Stable Cascade was new, diffusers renamed StableCascadeUNet's `c_in`/`c_out` to `in_channels`/
`out_channels`. A config using the other name than the installed diffusers has its value ignored, the
default (16 channels) is used, and loading fails with "embedding.1.weight expected shape ... (320, 64, 1, 1),
but got torch.Size([320, 16, 1, 1])" (the reference tutorial's Tips, whose fix is editing the cached config.json). Here
the value is passed under the name this diffusers expects; the user's file is left as it is.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Any

from imagegen.errors import Notice

# class name -> pairs of names that mean the same argument in different diffusers versions
_RENAMED_ARGUMENTS = {"StableCascadeUNet": (("c_in", "in_channels"), ("c_out", "out_channels"))}


class ConfigRepaired(Notice):
    """A component was loaded with a known-bad config entry repaired."""


def config_overrides(cls: type, folder: Path) -> dict[str, Any]:
    """Arguments that repair `folder`'s config.json for `cls` (passed to from_pretrained); {} when it is fine."""
    renamed = _RENAMED_ARGUMENTS.get(cls.__name__)
    config_file = folder / "config.json"
    if not renamed or not config_file.is_file():
        return {}
    config = json.loads(config_file.read_text())
    accepted = inspect.signature(cls.__init__).parameters
    overrides = {}
    for first, second in renamed:
        for written, expected in ((first, second), (second, first)):
            if written in config and written not in accepted and expected in accepted and expected not in config:
                overrides[expected] = config[written]
                warnings.warn(f"{config_file} says {written!r}, which this diffusers calls {expected!r} (a config "
                              f"from another diffusers version); loading it with {expected}={config[written]!r}",
                              ConfigRepaired, stacklevel=2)
    return overrides
