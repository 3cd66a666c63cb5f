"""AUTOMATIC1111's "infotext": the generation parameters stored inside an image.

A1111, ComfyUI readers, civitai and most image browsers look for this one text, so writing it
exactly as A1111 does makes our images readable there, and reading it lets users reuse theirs:

    <prompt, may be several lines>
    Negative prompt: <negative prompt, may be several lines>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512, Lora hashes: "a: 1f, b: 2e"

The layout follows A1111's `create_infotext` (modules/processing.py) and
`parse_generation_parameters`/`quote`/`unquote` (modules/infotext_utils.py); where the text
lives in a file follows `save_image`/`read_info_from_image` (modules/images.py).
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from imagegen.errors import InvalidImage
from imagegen.outputs.formats import IMAGE_SUFFIXES, suffix_for

SUPPORTED_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}

_NEGATIVE_LABEL = "Negative prompt:"
# A1111 takes the last line for parameters only when it holds at least 3 "key: value" pairs;
# otherwise the line is read as part of the prompt (parse_generation_parameters).
_MIN_PARAMS = 3
# A1111's grammar of one pair (infotext_utils.re_param): a key of word characters, spaces, "-"
# and "/"; then either a JSON string or anything up to the next comma.
_KEY = r"\w[\w \-/]+"
_PARAM = re.compile(rf'\s*({_KEY}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY_ONLY = re.compile(_KEY)

# EXIF: the Exif sub-IFD pointer in IFD0, and UserComment inside it (EXIF 2.32, 4.6.5).
_EXIF_IFD_TAG = 0x8769
_USER_COMMENT_TAG = 0x9286
_TIFF_LONG = 4
_TIFF_UNDEFINED = 7
# UserComment starts with an 8-byte character-code prefix (EXIF 2.32, table 9).
_UNICODE_PREFIX = b"UNICODE\x00"
_COMMENT_ENCODINGS = {b"ASCII\x00\x00\x00": "utf-8", b"JIS\x00\x00\x00\x00\x00": "shift_jis"}
_UNDEFINED_PREFIX = b"\x00" * 8


@dataclass(frozen=True)
class Infotext:
    """An infotext split into its parts; `params` keeps the text's order and raw string values."""

    prompt: str
    negative_prompt: str
    params: dict[str, str]


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Write the infotext A1111 would write for these values.

    Values are written with `str()` as A1111 does (so CFG scale 7.0 reads "7.0" and 7 reads "7");
    None values are left out. A value is JSON-quoted when it holds a comma, colon or newline (as
    A1111's `quote`), and also when it holds a double quote, is empty or has surrounding
    whitespace, which A1111 would otherwise read back changed; A1111 unquotes all of them alike.

    `parse_infotext` gives back exactly these values, provided the prompts' lines carry no
    surrounding whitespace (A1111's reader strips every prompt line).

    Raises ValueError for a key A1111 cannot read back, or for fewer than 3 parameters, which
    A1111 would read as one more line of the prompt.
    """
    written = {key: str(value) for key, value in params.items() if value is not None}
    for key in written:
        if not _KEY_ONLY.fullmatch(key):
            raise ValueError(
                f"infotext key {key!r} cannot be read back: use at least 2 characters, starting"
                " with a letter or digit, then letters, digits, spaces, '-' or '/'"
            )
    if len(written) < _MIN_PARAMS:
        raise ValueError(
            f"an infotext needs at least {_MIN_PARAMS} parameters, got {len(written)}:"
            " A1111 reads a shorter last line as part of the prompt"
        )
    params_line = ", ".join(f"{key}: {_quote(value)}" for key, value in written.items())
    negative_line = f"\n{_NEGATIVE_LABEL} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_line}\n{params_line}".strip()


def parse_infotext(text: str) -> Infotext:
    """Split an infotext from us, A1111, civitai or ComfyUI exporters into its parts.

    Reads as A1111 does: the last line holds the parameters if it has at least 3 pairs, lines
    before "Negative prompt:" are the prompt and lines from it on the negative prompt (each line
    stripped). Unlike A1111 it adds no defaults and keeps "Size: 512x512" as one string; unknown
    keys are kept, quoted values unquoted. Text that is not an infotext becomes the prompt.
    """
    *lines, last_line = text.strip().split("\n")
    pairs = _PARAM.findall(last_line)
    if len(pairs) < _MIN_PARAMS:
        lines.append(last_line)
        pairs = []

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    current = prompt_lines
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE_LABEL):
            current = negative_lines
            line = line[len(_NEGATIVE_LABEL) :].strip()
        current.append(line)

    # A1111 skips empty lines until a prompt has its first text; lstrip does the same.
    return Infotext(
        prompt="\n".join(prompt_lines).lstrip("\n"),
        negative_prompt="\n".join(negative_lines).lstrip("\n"),
        params={key: _unquote(value) for key, value in pairs},
    )


def save_image(
    image: Image.Image,
    path: Path,
    infotext: str,
    *,
    image_format: str | None = None,
    quality: int = 95,
) -> Path:
    """Write `image` with `infotext` where A1111 puts it, and return the path written.

    PNG keeps it in the "parameters" text chunk; JPEG and WEBP in the EXIF UserComment, as
    "UNICODE\\0" + UTF-16 big-endian (A1111 via piexif). The format is `image_format` or else the
    path's suffix; a path without that format's suffix gets it appended. Parent folders are
    created, and the file appears complete or not at all (written aside, then renamed), so a
    gallery watching the folder never reads half an image. `quality` applies to JPEG and WEBP.

    Raises ValueError for an unknown format, a suffix that contradicts `image_format`, or a
    quality outside 0..100.
    """
    return save_image_encoded(image, path, infotext, image_format=image_format, quality=quality)[0]


def save_image_encoded(image: Image.Image, path: Path, infotext: str, *, image_format: str | None = None,
                       quality: int = 95) -> tuple[Path, bytes]:
    """save_image, also returning the bytes written (the server answers base64 from them, not from the disk)."""
    image_format, path = _resolve_format(path, image_format)
    data = encode_image(image, infotext, image_format, quality=quality)
    write_file(path, data)
    return path, data


def encode_image(image: Image.Image, infotext: str, image_format: str, *, quality: int = 95) -> bytes:
    """The file's bytes in memory, as save_image writes them."""
    if not 0 <= quality <= 100:
        raise ValueError(f"quality must be between 0 and 100, got {quality}")
    options: dict[str, object] = {}
    if image_format == "png":
        png_info = PngImagePlugin.PngInfo()
        png_info.add_text("parameters", infotext)
        options["pnginfo"] = png_info
    else:
        options["quality"] = quality
        options["exif"] = exif_with_user_comment(infotext)
        if image_format == "jpeg" and image.mode not in ("RGB", "L"):
            # JPEG holds neither alpha nor a palette; A1111 drops RGBA's alpha the same way.
            image = image.convert("RGB")
    encoded = io.BytesIO()
    image.save(encoded, format=_PIL_FORMATS[image_format], **options)
    return encoded.getvalue()


def write_file(path: Path, data: bytes) -> None:
    """Write `data` aside and rename (write_aside), creating the parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_aside(path, lambda partial: partial.write_bytes(data))


def write_aside(path: Path, write: Callable[[Path], object]) -> None:
    """Run `write` on a name beside `path`, then rename, so a watching gallery never reads half a file."""
    partial = path.with_name(path.name + ".tmp")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read_parameters(path: Path) -> str | None:
    """The infotext of an image, a video file or a folder of video frames."""
    from imagegen.outputs.formats import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    if path.is_dir() or path.suffix.lower() in set(VIDEO_SUFFIXES) - set(IMAGE_SUFFIXES):
        from imagegen.outputs.video_files import read_video_infotext

        return read_video_infotext(path)
    return read_infotext(path)


def read_infotext(path: Path) -> str | None:
    """The infotext stored in an image, or None if it has none.

    Looks where A1111 does: the EXIF UserComment (JPEG, WEBP, also PNG) wins over the PNG
    "parameters" text chunk. UserComment may be UNICODE (either byte order, as other tools write
    little-endian), ASCII (read as UTF-8, which some tools put there) or JIS.

    Raises InvalidImage, naming the file, when it is missing, not an image, or truncated.
    """
    try:
        with Image.open(path) as image:
            # Loading the pixels reads PNG text chunks placed after the image data, and is what
            # notices a truncated file.
            image.load()
            comment = image.getexif().get_ifd(_EXIF_IFD_TAG).get(_USER_COMMENT_TAG)
            parameters = image.info.get("parameters")
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        # OSError: missing, unidentified or truncated; SyntaxError: Pillow's "broken PNG file";
        # DecompressionBombError: a header claiming more pixels than Pillow agrees to decode.
        raise InvalidImage(f"cannot read {path} as an image: {error}") from error

    text = _decode_user_comment(comment) if isinstance(comment, bytes) else ""
    return text or (str(parameters) if parameters else None)


def _quote(value: str) -> str:
    """`value` as A1111's reader will read it back unchanged."""
    if value and value == value.strip() and not any(char in value for char in ',:\n"'):
        return value
    return json.dumps(value, ensure_ascii=False)


def _unquote(value: str) -> str:
    """Undo `_quote`; like A1111, a value that only looks quoted is kept as written."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _resolve_format(path: Path, image_format: str | None) -> tuple[str, Path]:
    """The format to write and the path to write it to."""
    allowed = ", ".join(SUPPORTED_FORMATS)
    suffix_format = IMAGE_SUFFIXES.get(path.suffix.lower())
    if image_format is None:
        if suffix_format is None:
            raise ValueError(
                f"cannot tell the image format of {path}: give it a suffix"
                f" ({', '.join(IMAGE_SUFFIXES)}) or pass image_format, one of {allowed}"
            )
        return suffix_format, path

    wanted = image_format.lower()
    if wanted not in SUPPORTED_FORMATS:
        raise ValueError(f"unknown image format {image_format!r}; choose one of {allowed}")
    if suffix_format is None:
        return wanted, path.with_name(path.name + suffix_for(wanted))
    if suffix_format != wanted:
        raise ValueError(f"{path} has the suffix of {suffix_format}, but image_format is {wanted}")
    return wanted, path


def exif_with_user_comment(text: str) -> bytes:
    """EXIF holding only UserComment, with the byte order, tags and types piexif.dump writes.

    Built by hand because Pillow writes an unknown bytes tag as BYTE, which piexif (so A1111)
    loads as a tuple of ints instead of the UNDEFINED bytes the EXIF standard prescribes.
    """
    comment = _UNICODE_PREFIX + text.encode("utf-16-be")
    ifd0_offset = 8  # right after the 8-byte TIFF header
    exif_ifd_offset = ifd0_offset + 2 + 12 + 4  # IFD0: entry count, one entry, next-IFD link
    comment_offset = exif_ifd_offset + 2 + 12 + 4
    tiff = b"".join(
        (
            struct.pack(">2sHL", b"MM", 42, ifd0_offset),
            struct.pack(">HHHLLL", 1, _EXIF_IFD_TAG, _TIFF_LONG, 1, exif_ifd_offset, 0),
            struct.pack(">HHHLLL", 1, _USER_COMMENT_TAG, _TIFF_UNDEFINED, len(comment), comment_offset, 0),
            comment,
        )
    )
    return b"Exif\x00\x00" + tiff


def _decode_user_comment(data: bytes) -> str:
    """UserComment's text, whatever character code the writer chose."""
    prefix, body = data[:8], data[8:]
    if prefix == _UNICODE_PREFIX:
        text = body.decode(_utf16_byte_order(body), errors="replace")
    elif prefix in _COMMENT_ENCODINGS:
        text = body.decode(_COMMENT_ENCODINGS[prefix], errors="replace")
    elif prefix == _UNDEFINED_PREFIX:
        text = body.decode("utf-8", errors="replace")
    else:
        # No known prefix: A1111 decodes the whole value as UTF-8.
        text = data.decode("utf-8", errors="ignore")
    return text.rstrip("\x00")


def _utf16_byte_order(body: bytes) -> str:
    """The codec for UTF-16 without a declared byte order.

    The EXIF standard leaves the order open and A1111 writes big-endian, but some tools write
    little-endian. Infotexts are mostly ASCII, whose high byte is zero: zeros in the odd bytes
    mean little-endian. A byte order mark, when present, decides.
    """
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return "utf-16"
    if body[1::2].count(0) > body[0::2].count(0):
        return "utf-16-le"
    return "utf-16-be"
