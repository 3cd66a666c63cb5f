"""The results a generation returns: the pixels with the seed and infotext that reproduce them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

    from imagegen.request import GenerationRequest


@dataclass
class GeneratedImage:
    """One generated image with everything needed to reproduce it."""

    image: Image.Image
    seed: int
    infotext: str
    request: GenerationRequest = field(repr=False)

    def save(self, path: str | Path) -> Path:
        """Write the image with its infotext embedded, in the request's output format."""
        return self.save_encoded(path)[0]

    def save_encoded(self, path: str | Path) -> tuple[Path, bytes | None]:
        """save(), also returning the file's bytes (which the server answers inline without reading them back)."""
        from imagegen.errors import OutputError
        from imagegen.outputs.metadata import save_image_encoded

        try:
            return save_image_encoded(self.image, Path(path), self.infotext, image_format=self.request.output_format)
        except OSError as error:
            raise OutputError(f"cannot write {path}: {error.strerror or error}") from None


@dataclass
class GeneratedVideo:
    """One generated video: its frames, with everything needed to reproduce it."""

    frames: list[Image.Image]
    seed: int
    infotext: str
    request: GenerationRequest = field(repr=False)

    def save(self, path: str | Path) -> Path:
        """Write the video (MP4, GIF, WebP or a folder of PNG frames, by the request's format) with its parameters."""
        from imagegen.outputs.video_files import save_video

        return save_video(self.frames, Path(path), fps=self.request.fps, infotext=self.infotext,
                          video_format=self.request.output_format)

    def save_encoded(self, path: str | Path) -> tuple[Path, bytes | None]:
        """save(), and no bytes: a video is answered from its file."""
        return self.save(path), None
