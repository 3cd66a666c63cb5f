"""animatediff and animatediff-lightning: diffusers' AnimateDiff example and the Lightning model card, frame for frame."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import reference_tutorial_animatediff

from imagegen.errors import InvalidRequest
from imagegen.outputs.video_files import probe_video, read_video_infotext
from imagegen.prompts.lora_tags import LoraSpec
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("animatediff_models")

PROMPT = "a girl smiling, masterpiece"
SIZE = {"width": 64, "height": 64}


def frames_of(video) -> np.ndarray:
    return np.stack([np.asarray(frame.convert("RGB")) for frame in video]).astype(int)


def animatediff(recipe: str = "animatediff", **options) -> GenerationRequest:
    return GenerationRequest(**{"prompt": PROMPT, "recipe": recipe, **SIZE, "num_frames": 4, **options})


def test_matches_diffusers_animatediff_example(engine) -> None:
    ours = engine.generate(animatediff(seed=3, num_inference_steps=3))
    theirs = reference_tutorial_animatediff.animatediff(PROMPT, seed=3, num_frames=4, steps=3)
    np.testing.assert_array_equal(frames_of(ours[0].frames), frames_of(theirs))
    assert "Frames: 4" in ours[0].infotext and "FPS: 8" in ours[0].infotext


@pytest.mark.parametrize("steps", [2, 4])
def test_lightning_matches_its_model_card(engine, steps) -> None:
    ours = engine.generate(animatediff("animatediff-lightning", seed=3, num_inference_steps=steps))
    theirs = reference_tutorial_animatediff.animatediff_lightning(PROMPT, seed=3, steps=steps, num_frames=4)
    np.testing.assert_array_equal(frames_of(ours[0].frames), frames_of(theirs))


def test_batches_keep_the_seed_contract_and_loras_apply_and_leave(engine, tmp_path, monkeypatch) -> None:
    from tiny_sd15 import write_loras

    write_loras(tmp_path)
    monkeypatch.setenv("IMAGEGEN_LORA_DIR", str(tmp_path))
    plain = engine.generate(animatediff(seed=8, num_inference_steps=2, num_images=2))
    alone = engine.generate(animatediff(seed=9, num_inference_steps=2))
    np.testing.assert_array_equal(frames_of(plain[1].frames), frames_of(alone[0].frames))
    styled = engine.generate(animatediff(seed=9, num_inference_steps=2, loras=(LoraSpec("sd15_kohya"),)))
    assert np.abs(frames_of(styled[0].frames) - frames_of(alone[0].frames)).mean() > 3
    again = engine.generate(animatediff(seed=9, num_inference_steps=2))
    np.testing.assert_array_equal(frames_of(again[0].frames), frames_of(alone[0].frames))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_frames": 33}, "recipe animatediff makes at most 32 frames, got 33"),
        ({"fps": 0}, "fps must be between 1 and 60"),
        ({"init_image": "x.png"}, "recipe animatediff does not take an init image"),
        ({"motion_bucket_id": 100}, "recipe animatediff does not take motion_bucket_id"),
        ({"output_format": "gif", "fps": 60}, "a GIF plays at most 50 fps"),
    ],
)
def test_bad_requests_are_refused_before_loading(options, message) -> None:
    from imagegen.recipes import get_recipe

    with pytest.raises(InvalidRequest, match=message):
        animatediff(**options).resolve(get_recipe("animatediff"))


@pytest.mark.slow
@pytest.mark.parametrize(("suffix", "frames"), [(".mp4", 4), (".gif", 4), ("", 4)])
def test_cli_writes_a_video_that_info_reads(tmp_path, suffix, frames) -> None:
    out = tmp_path / f"clip{suffix}" if suffix else tmp_path / "frames"
    fmt = [] if suffix else ["--format", "frames"]
    run = subprocess.run([sys.executable, "-m", "imagegen.cli", "generate", PROMPT, "--recipe", "animatediff",
                          "--frames", "4", "--steps", "2", "--width", "64", "--height", "64", "--seed", "2", "-q",
                          "-o", str(out), *fmt], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    written = run.stdout.split()[0]
    assert probe_video(written)[:3] == (frames, 64, 64)
    info = subprocess.run([sys.executable, "-m", "imagegen.cli", "info", written], capture_output=True, text=True,
                          check=False)
    assert info.stdout.strip() == read_video_infotext(written) and "Frames: 4" in info.stdout
