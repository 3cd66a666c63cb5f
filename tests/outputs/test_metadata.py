"""The infotext A1111, ComfyUI and civitai read from our images, and the one we read from theirs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from imagegen.errors import InvalidImage
from imagegen.outputs.metadata import (
    Infotext,
    format_infotext,
    parse_infotext,
    read_infotext,
    save_image,
)

BASIC_PARAMS = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": 123, "Size": "512x512"}

# Written by A1111 v1.9.4 (a PNG "parameters" chunk quoted in a public extension's source).
A1111_SAMPLE = (
    "1girl,A superstar on stage.,, <lora:LCM_15:1>, <lora:ip-adapter-faceid-plusv2_sd15_lora:1>\n"
    "Negative prompt: MajicNegative_V2,badhandv4,\n"
    "Steps: 6, Sampler: LCM, Schedule type: Automatic, CFG scale: 1.5, Seed: 3748719078, Size: 768x1024,"
    " Model hash: 19bbe9faa4, Model: fantasticmix_k2, VAE hash: 07af11b95c,"
    " VAE: vae-ft-mse-840000-ema-pruned.safetensors, Clip skip: 2,"
    ' Lora hashes: "LCM_15: aaebf6360f7d, ip-adapter-faceid-plusv2_sd15_lora: a95a0f4bdcb9",'
    ' TI hashes: "MajicNegative_V2: a53884ef726b, badhandv4: 5e40d722fc3d",'
    " Downcast alphas_cumprod: True, Version: v1.9.4"
)


def test_format_writes_a1111_layout() -> None:
    text = format_infotext(
        "a cat", "blurry", {**BASIC_PARAMS, "Model": None, "Lora hashes": "a: 123abc, b: 456def"}
    )

    assert text == (
        "a cat\n"
        "Negative prompt: blurry\n"
        'Steps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 123, Size: 512x512, Lora hashes: "a: 123abc, b: 456def"'
    )


def test_format_writes_numbers_as_given_and_omits_empty_negative() -> None:
    text = format_infotext("a cat", "", {"Steps": 4, "CFG scale": 0, "Denoising strength": 0.75})

    assert text == "a cat\nSteps: 4, CFG scale: 0, Denoising strength: 0.75"


@pytest.mark.parametrize(
    ("prompt", "negative_prompt", "params"),
    [
        ("a cat\non a mat\n\nin the sun", "", BASIC_PARAMS),
        ("a cat", "blurry, lowres\nwatermark", BASIC_PARAMS),
        (
            "masterpiece, (cat:1.2)",
            "bad",
            {
                "Model": 'my "best", model: v2',
                "Lora hashes": "a: 123abc, b: 456def",
                "Note": "line one\nline two",
                "Quoted": '"already quoted"',
                "Spaced": "  padded  ",
                "Empty": "",
                "Path/like-key": "C:\\models\\x.safetensors",
            },
        ),
        ("一只猫，坐在垫子上\n第二行", "模糊，低质量", {"步数": 20, "采样器": "Euler a", "Size": "512x768"}),
        ("", "", BASIC_PARAMS),
    ],
)
def test_parse_gives_back_what_format_wrote(prompt: str, negative_prompt: str, params: dict[str, object]) -> None:
    parsed = parse_infotext(format_infotext(prompt, negative_prompt, params))

    assert parsed == Infotext(prompt, negative_prompt, {key: str(value) for key, value in params.items()})


def test_parse_reads_a1111_infotext() -> None:
    parsed = parse_infotext(A1111_SAMPLE)

    assert parsed.prompt == "1girl,A superstar on stage.,, <lora:LCM_15:1>, <lora:ip-adapter-faceid-plusv2_sd15_lora:1>"
    assert parsed.negative_prompt == "MajicNegative_V2,badhandv4,"
    assert list(parsed.params) == [
        "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model", "VAE hash", "VAE",
        "Clip skip", "Lora hashes", "TI hashes", "Downcast alphas_cumprod", "Version",
    ]  # fmt: skip
    assert parsed.params["Steps"] == "6"
    assert parsed.params["CFG scale"] == "1.5"
    assert parsed.params["Seed"] == "3748719078"
    assert parsed.params["Size"] == "768x1024"
    assert parsed.params["Model"] == "fantasticmix_k2"
    assert parsed.params["Lora hashes"] == "LCM_15: aaebf6360f7d, ip-adapter-faceid-plusv2_sd15_lora: a95a0f4bdcb9"
    assert parsed.params["Downcast alphas_cumprod"] == "True"
    assert parsed.params["Version"] == "v1.9.4"


def test_parse_reads_the_example_in_a1111_docstring() -> None:
    # The example in the docstring of A1111's parse_generation_parameters (modules/infotext_utils.py).
    text = (
        "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup,"
        " by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
        "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured,"
        " poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"
    )

    parsed = parse_infotext(text)

    assert parsed.prompt.startswith("girl with an artist's beret,") and parsed.prompt.endswith("intricate")
    assert parsed.negative_prompt.startswith("ugly, fat,") and parsed.negative_prompt.endswith("messy drawing")
    assert parsed.params == {
        "Steps": "20",
        "Sampler": "Euler a",
        "CFG scale": "7",
        "Seed": "965400086",
        "Size": "512x512",
        "Model hash": "45dee52b",
    }


def test_parse_reads_multiline_negative_and_crlf() -> None:
    text = "a cat\r\nNegative prompt: blurry\r\nwatermark\r\nSteps: 20, Seed: 1, Size: 512x512\r\n"

    parsed = parse_infotext(text)

    assert parsed == Infotext("a cat", "blurry\nwatermark", {"Steps": "20", "Seed": "1", "Size": "512x512"})


def test_parse_reads_a_text_without_parameters_as_prompt() -> None:
    parsed = parse_infotext("just a prompt, Steps: 20\nsecond line")

    assert parsed == Infotext("just a prompt, Steps: 20\nsecond line", "", {})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"Steps": 20, "Seed": 1}, "at least 3 parameters"),
        ({"Steps": 20, "Seed": 1, "Model": None}, "at least 3 parameters"),
        ({**BASIC_PARAMS, "Bad: key": 1}, "'Bad: key'"),
        ({**BASIC_PARAMS, "X": 1}, "'X'"),
    ],
)
def test_format_refuses_what_a1111_cannot_read_back(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        format_infotext("a cat", "", params)


SAMPLE_TEXT = format_infotext(
    "一只猫 on a mat, \"quoted\"\nsecond line", "模糊, blurry", {**BASIC_PARAMS, "Lora hashes": "a: 1, b: 2"}
)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".webp"])
def test_saved_image_gives_back_its_infotext(tmp_path: Path, suffix: str) -> None:
    path = save_image(Image.new("RGB", (8, 8), "red"), tmp_path / f"cat{suffix}", SAMPLE_TEXT)

    assert path == tmp_path / f"cat{suffix}"
    assert read_infotext(path) == SAMPLE_TEXT


def test_png_carries_text_where_a1111_and_comfyui_read_it(tmp_path: Path) -> None:
    path = save_image(Image.new("RGB", (8, 8)), tmp_path / "cat.png", SAMPLE_TEXT)

    with Image.open(path) as image:
        assert image.info["parameters"] == SAMPLE_TEXT


@pytest.mark.parametrize("image_format", ["jpeg", "webp"])
def test_jpeg_and_webp_carry_text_as_a1111_writes_it(tmp_path: Path, image_format: str) -> None:
    path = save_image(Image.new("RGB", (8, 8)), tmp_path / "cat", SAMPLE_TEXT, image_format=image_format)

    with Image.open(path) as image:
        assert image.format == image_format.upper()
        comment = image.getexif().get_ifd(0x8769)[0x9286]
        raw_exif = image.info["exif"]
    assert comment == b"UNICODE\x00" + SAMPLE_TEXT.encode("utf-16-be")
    # UserComment typed UNDEFINED (7), as piexif writes and reads it (big-endian TIFF).
    assert b"\x92\x86\x00\x07" in raw_exif


def test_jpeg_drops_alpha_and_keeps_text(tmp_path: Path) -> None:
    path = save_image(Image.new("RGBA", (8, 8), (255, 0, 0, 128)), tmp_path / "cat.jpg", SAMPLE_TEXT, quality=80)

    with Image.open(path) as image:
        assert image.mode == "RGB"
    assert read_infotext(path) == SAMPLE_TEXT


def test_save_creates_folders_and_appends_missing_suffix(tmp_path: Path) -> None:
    path = save_image(Image.new("RGB", (8, 8)), tmp_path / "a" / "b" / "cat", SAMPLE_TEXT, image_format="WEBP")

    assert path == tmp_path / "a" / "b" / "cat.webp"
    assert read_infotext(path) == SAMPLE_TEXT
    assert sorted(p.name for p in path.parent.iterdir()) == ["cat.webp"]


@pytest.mark.parametrize(
    ("name", "image_format", "message"),
    [
        ("cat.png", "gif", r"unknown image format 'gif'; choose one of png, jpeg, webp"),
        ("cat.gif", None, r"cannot tell the image format .*png, jpeg, webp"),
        ("cat.png", "jpeg", r"suffix of png, but image_format is jpeg"),
    ],
)
def test_save_refuses_unknown_or_contradicting_format(
    tmp_path: Path, name: str, image_format: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        save_image(Image.new("RGB", (8, 8)), tmp_path / name, SAMPLE_TEXT, image_format=image_format)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "comment",
    [
        b"UNICODE\x00" + "Steps: 20, Seed: 1, Size: 512x512".encode("utf-16-le"),
        b"ASCII\x00\x00\x00" + "Steps: 20, Seed: 1, Size: 512x512".encode(),
    ],
    ids=["unicode-little-endian", "ascii"],
)
def test_read_decodes_user_comment_from_other_tools(tmp_path: Path, comment: bytes) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment
    path = tmp_path / "other.jpg"
    Image.new("RGB", (8, 8)).save(path, exif=exif)

    assert read_infotext(path) == "Steps: 20, Seed: 1, Size: 512x512"


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_read_returns_none_without_infotext(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"plain{suffix}"
    Image.new("RGB", (8, 8)).save(path)

    assert read_infotext(path) is None


def test_read_refuses_a_file_that_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image")

    with pytest.raises(InvalidImage, match="notes.png"):
        read_infotext(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_read_refuses_a_truncated_image(tmp_path: Path, suffix: str) -> None:
    path = save_image(Image.effect_noise((64, 64), 64).convert("RGB"), tmp_path / f"cut{suffix}", SAMPLE_TEXT)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(InvalidImage, match=f"cut{suffix}"):
        read_infotext(path)
