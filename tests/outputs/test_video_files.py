"""Videos as users get them: frames, size and rate a player shows, and the parameters inside the file."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagegen.errors import InvalidImage, InvalidRequest, OutputError
from imagegen.outputs.metadata import read_infotext
from imagegen.outputs.video_files import probe_video, read_video_infotext, save_video

needs_av = pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="MP4 needs the video extra (PyAV)")

INFOTEXT = (
    'a "red" fox, ünïcode ✓\nin the snow\n'
    "Negative prompt: blurry\n"
    "Steps: 4, Sampler: Euler a, CFG scale: 1.0, Seed: 7, Size: 48x32"
)
WIDTH, HEIGHT, COUNT, FPS = 48, 32, 6, 8


def moving_gradient(count: int = COUNT, width: int = WIDTH, height: int = HEIGHT) -> list[Image.Image]:
    """Distinct, smooth frames: GIF and WebP merge identical ones, and noise would defeat a lossy codec."""
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        red = x * 4 + i * 10  # no wrap-around: a hard edge is what yuv420p's halved colour blurs
        green = y * 6
        blue = np.full_like(x, 40 * i)
        frames.append(Image.fromarray(np.stack([red, green, blue], axis=-1).astype(np.uint8)))
    return frames


def played_fps(path: Path) -> float:
    """The rate a player would use, read the way each format stores it."""
    if path.is_dir():
        return json.loads((path / "frames.json").read_text())["fps"]
    if path.suffix == ".mp4":
        import av

        with av.open(str(path)) as container:
            return float(container.streams.video[0].average_rate)
    with Image.open(path) as image:
        image.load()  # Pillow reads a WebP frame's duration when it decodes the frame
        return 1000 / image.info["duration"]


@pytest.mark.parametrize("name", [pytest.param("clip.mp4", marks=needs_av), "clip.gif", "clip.webp", "clip"])
def test_round_trip_keeps_frames_size_rate_and_infotext(tmp_path: Path, name: str) -> None:
    path = save_video(moving_gradient(), tmp_path / name, fps=FPS, infotext=INFOTEXT)

    assert path == tmp_path / name
    assert probe_video(path) == (COUNT, WIDTH, HEIGHT)
    assert played_fps(path) == pytest.approx(FPS, rel=0.05)  # GIF keeps 1/100 s: 8 fps plays at 8.33
    assert read_video_infotext(path) == INFOTEXT


@needs_av
def test_mp4_frames_decode_close_to_the_input(tmp_path: Path) -> None:
    import av

    frames = moving_gradient()
    path = save_video(frames, tmp_path / "clip.mp4", fps=FPS, infotext=INFOTEXT)

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    differences = [np.abs(out.astype(int) - np.asarray(original, dtype=int)).mean()
                   for out, original in zip(decoded, frames)]
    assert max(differences) < 4  # of 255: lossy, but no shifted, dropped or reordered frames


@needs_av
def test_mp4_carries_infotext_inside_and_in_a_sidecar(tmp_path: Path) -> None:
    path = save_video(moving_gradient(), tmp_path / "clip.mp4", fps=FPS, infotext=INFOTEXT)
    sidecar = tmp_path / "clip.mp4.json"

    assert json.loads(sidecar.read_text(encoding="utf-8")) == {
        "infotext": INFOTEXT, "frames": COUNT, "fps": FPS, "width": WIDTH, "height": HEIGHT,
    }
    sidecar.unlink()
    assert read_video_infotext(path) == INFOTEXT


@needs_av
def test_sidecar_answers_for_an_mp4_that_lost_its_tag(tmp_path: Path) -> None:
    save_video(moving_gradient(), tmp_path / "tagged.mp4", fps=FPS, infotext=INFOTEXT)
    untagged = save_video(moving_gradient(), tmp_path / "untagged.mp4", fps=FPS, infotext="")
    (tmp_path / "untagged.mp4.json").write_bytes((tmp_path / "tagged.mp4.json").read_bytes())

    assert read_video_infotext(untagged) == INFOTEXT


@needs_av
def test_mp4_pads_odd_sides_by_repeating_the_edge(tmp_path: Path) -> None:
    import av

    frames = moving_gradient(count=2, width=47, height=31)
    path = save_video(frames, tmp_path / "odd.mp4", fps=FPS, infotext=INFOTEXT)

    assert probe_video(path) == (2, 48, 32)
    with av.open(str(path)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert np.abs(first[:, -1] - first[:, -2]).mean() < 4  # a copy of the edge, not a black line
    assert np.abs(first[-1] - first[-2]).mean() < 4


def test_gif_keeps_odd_sides(tmp_path: Path) -> None:
    path = save_video(moving_gradient(count=2, width=47, height=31), tmp_path / "odd.gif", fps=FPS, infotext=INFOTEXT)

    assert probe_video(path) == (2, 47, 31)


def test_frames_folder_holds_pngs_with_parameters_and_a_sidecar(tmp_path: Path) -> None:
    folder = save_video(moving_gradient(), tmp_path / "clip", fps=FPS, infotext=INFOTEXT)

    assert sorted(p.name for p in folder.iterdir()) == [*(f"frame_{i:05d}.png" for i in range(COUNT)), "frames.json"]
    assert read_infotext(folder / "frame_00003.png") == INFOTEXT
    assert json.loads((folder / "frames.json").read_text(encoding="utf-8"))["frames"] == COUNT


def test_rewriting_a_frames_folder_leaves_only_the_new_frames(tmp_path: Path) -> None:
    save_video(moving_gradient(count=4), tmp_path / "clip", fps=FPS, infotext=INFOTEXT)
    folder = save_video(moving_gradient(count=2), tmp_path / "clip", fps=FPS, infotext="second")

    assert probe_video(folder) == (2, WIDTH, HEIGHT)
    assert read_video_infotext(folder) == "second"


def test_video_format_appends_its_suffix_and_accepts_any_mode(tmp_path: Path) -> None:
    frames = [frame.convert("RGBA") for frame in moving_gradient(count=2)]

    path = save_video(frames, tmp_path / "clip", fps=FPS, infotext=INFOTEXT, video_format="WEBP")

    assert path == tmp_path / "clip.webp"
    assert probe_video(path) == (2, WIDTH, HEIGHT)


@pytest.mark.parametrize(
    ("name", "video_format", "message"),
    [
        ("clip.avi", None, "cannot write a .avi video"),
        ("clip.gif", "mp4", "has the suffix of gif, but the video format is mp4"),
        ("clip", "mkv", "unknown video format 'mkv'"),
    ],
)
def test_unknown_or_contradictory_format_is_refused(
    tmp_path: Path, name: str, video_format: str | None, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        save_video(moving_gradient(count=1), tmp_path / name, fps=FPS, infotext=INFOTEXT, video_format=video_format)
    assert list(tmp_path.iterdir()) == []


def test_empty_and_mismatched_frames_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="at least one frame"):
        save_video([], tmp_path / "clip.gif", fps=FPS, infotext=INFOTEXT)
    frames = [*moving_gradient(count=2), Image.new("RGB", (64, 64))]
    with pytest.raises(InvalidRequest, match="frame 0 is 48x32, frame 2 is 64x64"):
        save_video(frames, tmp_path / "clip.gif", fps=FPS, infotext=INFOTEXT)


@pytest.mark.parametrize(("name", "fps", "message"), [
    ("clip.webp", 0, "positive"),
    ("clip.webp", float("nan"), "positive"),
    ("clip.gif", 60, "fps <= 50"),
])
def test_unplayable_rates_are_refused(tmp_path: Path, name: str, fps: float, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        save_video(moving_gradient(count=1), tmp_path / name, fps=fps, infotext=INFOTEXT)


@pytest.mark.parametrize("name", [pytest.param("clip.mp4", marks=needs_av), "clip.gif", "clip.webp", "clip"])
def test_unwritable_path_is_an_output_error(tmp_path: Path, name: str) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")

    with pytest.raises(OutputError, match="not-a-folder"):
        save_video(moving_gradient(count=1), blocker / name, fps=FPS, infotext=INFOTEXT)


def test_frames_over_an_existing_file_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "clip").write_text("")

    with pytest.raises(OutputError, match="not a folder"):
        save_video(moving_gradient(count=1), tmp_path / "clip", fps=FPS, infotext=INFOTEXT)


def test_missing_video_extra_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` fail as if not installed

    with pytest.raises(InvalidRequest, match=r"pip install 'imagegen\[video\]'"):
        save_video(moving_gradient(count=1), tmp_path / "clip.mp4", fps=FPS, infotext=INFOTEXT)
    assert list(tmp_path.iterdir()) == []
    assert probe_video(save_video(moving_gradient(count=1), tmp_path / "clip.gif", fps=FPS, infotext=INFOTEXT))[0] == 1


def test_sidecar_answers_for_an_mp4_without_the_video_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"not read")
    (tmp_path / "clip.mp4.json").write_text(json.dumps({"infotext": INFOTEXT}), encoding="utf-8")
    monkeypatch.setitem(sys.modules, "av", None)

    assert read_video_infotext(tmp_path / "clip.mp4") == INFOTEXT
    with pytest.raises(InvalidRequest, match="imagegen"):
        probe_video(tmp_path / "clip.mp4")


@pytest.mark.parametrize("name", [pytest.param("broken.mp4", marks=needs_av), "broken.gif", "broken.webp"])
def test_unreadable_files_are_invalid_images(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not a video")

    with pytest.raises(InvalidImage, match=name):
        probe_video(path)
    with pytest.raises(InvalidImage, match=name):
        read_video_infotext(path)


def test_missing_and_unknown_paths_are_invalid_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")

    with pytest.raises(InvalidImage, match="no such file"):
        read_video_infotext(tmp_path / "absent.mp4")
    with pytest.raises(InvalidImage, match="expected a .mp4, .gif, .webp file"):
        probe_video(tmp_path / "notes.txt")
    with pytest.raises(InvalidImage, match="holds no"):
        probe_video(tmp_path)


def test_importing_the_module_loads_no_video_library() -> None:
    code = "import sys, imagegen.outputs.video_files; print('av' in sys.modules, 'numpy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.split() == ["False", "False"]
