"""The output formats and the file suffixes that name them: one table for the request, the writers and the CLI."""

from __future__ import annotations

OUTPUT_FORMATS = ("png", "jpeg", "webp")
VIDEO_FORMATS = ("mp4", "gif", "webp", "frames")  # "frames": a folder of PNGs
IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
VIDEO_SUFFIXES = {".mp4": "mp4", ".gif": "gif", ".webp": "webp"}  # .webp: a still image or an animation
OUTPUT_SUFFIXES = {**IMAGE_SUFFIXES, **VIDEO_SUFFIXES}  # .webp is a still image or an animation, by the recipe
# Browsers play a GIF frame delay of 1/100 s or less as 1/10 s, so a faster GIF would play several times too slowly.
MAX_GIF_FPS = 50


def suffix_for(output_format: str) -> str:
    """The file suffix a result in `output_format` is written with ("" for a folder of frames)."""
    return {"jpeg": ".jpg", "frames": ""}.get(output_format, f".{output_format}")
