"""A1111's prompt syntax for LoRAs, `<lora:NAME:WEIGHT>`, and the LoRA a request asks for.

The tag is what users paste from civitai and what A1111 writes into infotext, so a prompt carrying tags
replays here as it does there. A name may itself hold ":" (a Windows path, "C:\\loras\\x.safetensors"):
only a last field that reads as a number is the weight.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from imagegen.errors import InvalidRequest

MAX_LORAS = 16
MAX_LORA_WEIGHT = 10.0  # A1111 accepts any number; beyond this a LoRA only produces noise
_TAG = re.compile(r"<lora:([^<>]+)>")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a request: a name in the LoRA folder, a file path or a hub id, and its weight."""

    name: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise InvalidRequest("a LoRA needs a name, path or hub id")
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or abs(weight) > MAX_LORA_WEIGHT:
            raise InvalidRequest(f"LoRA {self.name}: weight must be a number between -{MAX_LORA_WEIGHT:g} and "
                                 f"{MAX_LORA_WEIGHT:g}, got {weight!r}")

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """`NAME` or `NAME:WEIGHT`, as in `--lora` and inside a prompt tag."""
        text = text.strip()
        name, separator, weight = text.rpartition(":")
        if not separator:
            return cls(text)
        try:
            value = float(weight)
        except ValueError:  # "C:\path" or an A1111 named argument: the whole text is the name
            return cls(text)
        return cls(name.strip(), value)

    def tag(self) -> str:
        """A1111's short form ("0.8", "1") where it reads back exactly, else the full float."""
        short = f"{self.weight:g}"
        return f"<lora:{self.name}:{short if float(short) == self.weight else repr(float(self.weight))}>"


def split_lora_tags(prompt: str) -> tuple[str, tuple[LoraSpec, ...]]:
    """The prompt without its LoRA tags (whitespace left by them collapsed), and the tags' LoRAs in order."""
    loras = tuple(LoraSpec.parse(match) for match in _TAG.findall(prompt))
    text = _TAG.sub(" ", prompt) if loras else prompt
    return (re.sub(r"[ \t]{2,}", " ", text).strip() if loras else prompt), loras
