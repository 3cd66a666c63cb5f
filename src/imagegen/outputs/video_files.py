"""Write generated frames as a video that carries its generation parameters, and read them back.

A video keeps the A1111 infotext (see `imagegen.outputs.metadata`) where readers of each format look:

    mp4     the container's "comment" tag (written by FFmpeg's mp4 muxer as the iTunes "©cmt" atom,
            shown by ffprobe, VLC and exiftool), plus a sidecar `<file>.json`
    gif     the GIF comment extension
    webp    EXIF UserComment, as `metadata.save_image` writes it for a still WebP
    frames  a folder of frame_00000.png, ... each with a "parameters" chunk, plus `frames.json`

The sidecar JSON, {"infotext", "frames", "fps", "width", "height"}, survives tools that re-mux an
MP4 and drop its tags, and tells a frames folder's rate, which PNGs cannot hold.

MP4 needs PyAV (`pip install 'imagegen[video]'`), imported only when an MP4 is written or read;
GIF, WebP and frames folders need only Pillow.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from PIL import Image, ImageSequence

from imagegen.errors import InvalidImage, InvalidRequest, OutputError
from imagegen.outputs.formats import MAX_GIF_FPS, VIDEO_FORMATS, VIDEO_SUFFIXES
from imagegen.outputs.metadata import (
    exif_with_user_comment,
    read_infotext,
    save_image,
    write_aside,
)

if TYPE_CHECKING:
    import numpy


FRAMES_SIDECAR = "frames.json"
_FRAME_NAME = "frame_{index:05d}.png"
_FRAME_GLOB = "frame_[0-9][0-9][0-9][0-9][0-9].png"

# FFmpeg's H.264 guide calls CRF 17-18 "visually lossless" (https://trac.ffmpeg.org/wiki/Encode/H.264);
# x264's default, 23, visibly smears the fine texture of generated images.
_MP4_CRF = "18"
_WEBP_QUALITY = 95  # metadata.save_image's default for a still WebP
_MISSING_EXTRA = "MP4 needs PyAV: pip install 'imagegen[video]'"


def save_video(
    frames: Sequence[Image.Image],
    path: str | Path,
    *,
    fps: float,
    infotext: str,
    video_format: str | None = None,
) -> Path:
    """Write `frames` as a video carrying `infotext`, and return the path written.

    The format is `video_format` (one of VIDEO_FORMATS) or else the suffix: .mp4, .gif, .webp, or
    none for a folder of PNG frames; a path without its format's suffix gets it appended. Frames
    may have any mode (written as RGB) but must share one size. MP4 is H.264 in yuv420p, which
    needs even sides: an odd width or height gets one more column or row repeating the edge.
    Files appear complete or not at all (written aside, then renamed); rewriting a frames folder
    removes frames left from a longer video, so the folder holds exactly this one.

    GIF and WebP encoders merge identical consecutive frames into one longer frame: playback is
    the same, but `probe_video` then counts fewer frames. GIF stores delays in 1/100 s, so its rate
    is approximate.

    Raises InvalidRequest for an unknown or contradictory format, no frames, frames of different
    sizes, a rate that is not positive (or above 50 for GIF), or MP4 without PyAV; OutputError when
    the path cannot be written.
    """
    video_format, path = _resolve_format(Path(path), video_format)
    _check_fps(fps, video_format)
    rgb_frames = _rgb_frames(frames)
    writer = _WRITERS[video_format]
    try:
        writer(rgb_frames, path, fps, infotext)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def read_video_infotext(path: str | Path) -> str | None:
    """The infotext stored in a video written by `save_video`, or None if it has none.

    The copy inside the file wins; the sidecar JSON answers when the file lost its tag (or, for an
    MP4, when PyAV is not installed). Raises InvalidImage when the path is missing, not one of
    our formats or unreadable, and InvalidRequest for an MP4 with no sidecar when PyAV is missing.
    """
    path = Path(path)
    video_format = _existing_format(path)
    sidecar = _sidecar_path(path, video_format)
    if video_format == "mp4" and importlib.util.find_spec("av") is None and sidecar.is_file():
        return _read_sidecar(sidecar)
    return _INFOTEXT_READERS[video_format](path) or _read_sidecar(sidecar)


def probe_video(path: str | Path) -> tuple[int, int, int]:
    """(frames, width, height) of a video, counted by decoding every frame.

    Decoding, rather than trusting a header, is what notices a truncated or damaged file. Raises
    InvalidImage when the path is missing, not one of our formats or cannot be decoded, and
    InvalidRequest for an MP4 when PyAV is missing.
    """
    path = Path(path)
    return _PROBES[_existing_format(path)](path)


def _resolve_format(path: Path, video_format: str | None) -> tuple[str, Path]:
    """The format to write and the path to write it to."""
    suffix_format = VIDEO_SUFFIXES.get(path.suffix.lower())
    if video_format is None:
        if path.suffix and suffix_format is None:
            raise InvalidRequest(
                f"cannot write a {path.suffix} video; name a {', '.join(VIDEO_SUFFIXES)} file,"
                " a folder without a suffix for PNG frames, or pass a video format"
            )
        return suffix_format or "frames", path

    wanted = video_format.lower()
    if wanted not in VIDEO_FORMATS:
        raise InvalidRequest(f"unknown video format {video_format!r}; choose one of {', '.join(VIDEO_FORMATS)}")
    if wanted == "frames":
        return wanted, path
    if suffix_format is None:
        return wanted, path.with_name(f"{path.name}.{wanted}")
    if suffix_format != wanted:
        raise InvalidRequest(f"{path} has the suffix of {suffix_format}, but the video format is {wanted}")
    return wanted, path


def _check_fps(fps: float, video_format: str) -> None:
    if not (math.isfinite(fps) and fps > 0):
        raise InvalidRequest(f"fps must be a positive number, got {fps}")
    if video_format == "gif" and fps > MAX_GIF_FPS:
        raise InvalidRequest(
            f"GIF players slow down frames shorter than 1/{MAX_GIF_FPS} s; use fps <= {MAX_GIF_FPS},"
            f" or mp4 or webp for {fps:g} fps"
        )


def _rgb_frames(frames: Sequence[Image.Image]) -> list[Image.Image]:
    """The frames as RGB, once checked to be a non-empty run of one size."""
    if not frames:
        raise InvalidRequest("a video needs at least one frame, got none")
    size = frames[0].size
    for index, frame in enumerate(frames):
        if frame.size != size:
            raise InvalidRequest(
                f"all frames must have one size: frame 0 is {size[0]}x{size[1]},"
                f" frame {index} is {frame.size[0]}x{frame.size[1]}"
            )
    return [frame if frame.mode == "RGB" else frame.convert("RGB") for frame in frames]


def _write_mp4(frames: list[Image.Image], path: Path, fps: float, infotext: str) -> None:
    av = _import_av()
    arrays = [_even_sided(frame) for frame in frames]
    height, width = arrays[0].shape[:2]

    def write(partial: Path) -> None:
        # faststart puts the index before the frames, so a browser can play while it downloads.
        with av.open(str(partial), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            container.metadata["comment"] = infotext
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": _MP4_CRF}
            for array in arrays:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
            container.mux(stream.encode(None))  # flush the frames the encoder still holds

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_aside(path, write)
    except av.FFmpegError as error:
        raise OutputError(f"cannot write {path}: {error}") from None
    _write_sidecar(_sidecar_path(path, "mp4"), infotext, len(arrays), fps, width, height)


def _even_sided(frame: Image.Image) -> numpy.ndarray:
    """The frame's pixels, with its last column and/or row repeated to make both sides even."""
    import numpy

    pixels = numpy.asarray(frame)  # (H, W, 3)
    height, width = pixels.shape[:2]
    return numpy.pad(pixels, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _write_gif(frames: list[Image.Image], path: Path, fps: float, infotext: str) -> None:
    # A GIF delay counts 1/100 s; Pillow takes milliseconds and truncates, so give whole hundredths.
    duration = round(100 / fps) * 10
    options = {"duration": duration, "loop": 0, "comment": infotext.encode("utf-8")}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_aside(path, lambda partial: _save_animation(frames, partial, "GIF", options))


def _write_webp(frames: list[Image.Image], path: Path, fps: float, infotext: str) -> None:
    options = {
        "duration": round(1000 / fps),
        "loop": 0,
        "quality": _WEBP_QUALITY,
        "exif": exif_with_user_comment(infotext),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_aside(path, lambda partial: _save_animation(frames, partial, "WEBP", options))


def _save_animation(frames: list[Image.Image], path: Path, pil_format: str, options: dict[str, object]) -> None:
    frames[0].save(path, format=pil_format, save_all=True, append_images=frames[1:], **options)


def _write_frames(frames: list[Image.Image], folder: Path, fps: float, infotext: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write frames into {folder}: it exists and is not a folder")
    for index, frame in enumerate(frames):
        save_image(frame, folder / _FRAME_NAME.format(index=index), infotext, image_format="png")
    for stale in _frame_files(folder)[len(frames) :]:
        stale.unlink()
    width, height = frames[0].size
    _write_sidecar(folder / FRAMES_SIDECAR, infotext, len(frames), fps, width, height)


def _write_sidecar(path: Path, infotext: str, frames: int, fps: float, width: int, height: int) -> None:
    record = {"infotext": infotext, "frames": frames, "fps": fps, "width": width, "height": height}
    text = json.dumps(record, ensure_ascii=False, indent=2) + "\n"
    write_aside(path, lambda partial: partial.write_text(text, encoding="utf-8"))


_WRITERS: dict[str, Callable[[list[Image.Image], Path, float, str], None]] = {
    "mp4": _write_mp4,
    "gif": _write_gif,
    "webp": _write_webp,
    "frames": _write_frames,
}


def _existing_format(path: Path) -> str:
    """The format of a video on disk, told by its suffix, or a folder for frames."""
    if path.is_dir():
        return "frames"
    if not path.is_file():
        raise InvalidImage(f"cannot read {path}: no such file or folder")
    video_format = VIDEO_SUFFIXES.get(path.suffix.lower())
    if video_format is None:
        raise InvalidImage(f"cannot read {path} as a video: expected a {', '.join(VIDEO_SUFFIXES)} file or a folder")
    return video_format


def _sidecar_path(path: Path, video_format: str) -> Path:
    return path / FRAMES_SIDECAR if video_format == "frames" else path.with_name(path.name + ".json")


def _read_sidecar(path: Path) -> str | None:
    """The sidecar's infotext; None when there is no sidecar or it holds no text."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise InvalidImage(f"cannot read {path}: {error}") from None
    text = record.get("infotext") if isinstance(record, dict) else None
    return text if isinstance(text, str) and text else None


def _read_mp4_comment(path: Path) -> str | None:
    av = _import_av()
    try:
        with av.open(str(path)) as container:
            return container.metadata.get("comment") or None
    except av.FFmpegError as error:
        raise InvalidImage(f"cannot read {path} as a video: {error}") from None


def _read_gif_comment(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            comment = image.info.get("comment")
    except OSError as error:
        raise InvalidImage(f"cannot read {path} as a video: {error}") from None
    return comment.decode("utf-8", errors="replace") if comment else None


def _read_first_frame_infotext(folder: Path) -> str | None:
    frame_files = _frame_files(folder)
    return read_infotext(frame_files[0]) if frame_files else None


_INFOTEXT_READERS: dict[str, Callable[[Path], str | None]] = {
    "mp4": _read_mp4_comment,
    "gif": _read_gif_comment,
    "webp": read_infotext,
    "frames": _read_first_frame_infotext,
}


def _probe_mp4(path: Path) -> tuple[int, int, int]:
    av = _import_av()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            count = sum(1 for _ in container.decode(stream))
            return count, stream.codec_context.width, stream.codec_context.height
    except (av.FFmpegError, IndexError) as error:
        raise InvalidImage(f"cannot read {path} as a video: {error or 'it has no video stream'}") from None


def _probe_animation(path: Path) -> tuple[int, int, int]:
    """Frames and size of a GIF or WebP, decoding each frame."""
    try:
        with Image.open(path) as image:
            count = 0
            for frame in ImageSequence.Iterator(image):
                frame.load()
                count += 1
            return count, *image.size
    except (OSError, Image.DecompressionBombError) as error:
        raise InvalidImage(f"cannot read {path} as a video: {error}") from None


def _probe_frames(folder: Path) -> tuple[int, int, int]:
    """Frames and size of a frames folder, decoding each PNG and checking they share one size."""
    frame_files = _frame_files(folder)
    if not frame_files:
        raise InvalidImage(f"{folder} holds no {_FRAME_GLOB} frames")
    sizes = set()
    for frame_file in frame_files:
        try:
            with Image.open(frame_file) as frame:
                frame.load()
                sizes.add(frame.size)
        except (OSError, SyntaxError, Image.DecompressionBombError) as error:
            raise InvalidImage(f"cannot read {frame_file} as an image: {error}") from None
    if len(sizes) > 1:
        raise InvalidImage(f"the frames in {folder} differ in size: {sorted(sizes)}")
    return len(frame_files), *sizes.pop()


_PROBES: dict[str, Callable[[Path], tuple[int, int, int]]] = {
    "mp4": _probe_mp4,
    "gif": _probe_animation,
    "webp": _probe_animation,
    "frames": _probe_frames,
}


def _frame_files(folder: Path) -> list[Path]:
    """The folder's frame PNGs in playing order (the zero-padded names sort as numbers)."""
    return sorted(folder.glob(_FRAME_GLOB)) if folder.is_dir() else []


def _import_av() -> ModuleType:
    try:
        import av
    except ImportError:
        raise InvalidRequest(_MISSING_EXTRA) from None
    return av
