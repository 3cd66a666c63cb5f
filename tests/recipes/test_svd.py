"""svd: Stable Video Diffusion animates an input image, frame for frame as diffusers' SVD example does."""

from __future__ import annotations

import numpy as np
import pytest
import reference_tutorial_svd
from tiny_svd import SVD_TEST_FRAMES, SVD_TEST_HEIGHT, SVD_TEST_WIDTH, svd_test_image

from imagegen.errors import InvalidRequest
from imagegen.outputs.video_files import probe_video, read_video_infotext
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("svd_models")

SIZE = {"width": SVD_TEST_WIDTH, "height": SVD_TEST_HEIGHT}


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("svd") / "picture.png"
    svd_test_image().save(path)
    return path


def svd(picture, **options) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "", "recipe": "svd", "init_image": str(picture), **SIZE,
                                "num_frames": SVD_TEST_FRAMES, "num_inference_steps": 3, **options})


def frames_of(video) -> np.ndarray:
    return np.stack([np.asarray(frame.convert("RGB")) for frame in video])


def test_matches_diffusers_svd_example_frame_for_frame(engine, picture) -> None:
    ours = engine.generate(svd(picture, seed=4, motion_bucket_id=200, noise_aug_strength=0.05))
    theirs = reference_tutorial_svd.svd(svd_test_image(), seed=4, steps=3, motion_bucket_id=200,
                                    noise_aug_strength=0.05)
    assert len(ours[0].frames) == SVD_TEST_FRAMES
    np.testing.assert_array_equal(frames_of(ours[0].frames), frames_of(theirs))
    assert "Motion bucket: 200" in ours[0].infotext and "Noise augmentation: 0.05" in ours[0].infotext


def test_each_video_of_a_batch_is_its_seed_alone(engine, picture) -> None:
    """diffusers draws the input image's noise from the first generator only and decodes frames of different
    videos together; one call per seed keeps video i exactly the video of seed s + i."""
    batch = engine.generate(svd(picture, seed=10, num_images=2))
    alone = engine.generate(svd(picture, seed=11))
    assert [video.seed for video in batch] == [10, 11]
    np.testing.assert_array_equal(frames_of(batch[1].frames), frames_of(alone[0].frames))


def test_the_video_file_carries_the_parameters(engine, picture, tmp_path) -> None:
    video = engine.generate(svd(picture, seed=4))[0]
    path = video.save(tmp_path / "clip.mp4")
    assert probe_video(path) == (SVD_TEST_FRAMES, SVD_TEST_WIDTH, SVD_TEST_HEIGHT)
    assert read_video_infotext(path) == video.infotext
    assert "FPS: 7" in video.infotext and f"Frames: {SVD_TEST_FRAMES}" in video.infotext


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prompt": "a cat"}, "recipe svd takes no prompt"),
        ({"init_image": None}, r"needs an input image \(--init-image PATH\)"),
        ({"strength": 0.5}, "recipe svd does not take a strength"),
        ({"output_format": "png"}, "recipe svd writes videos: choose one of mp4, gif, webp, frames, not png"),
        ({"num_frames": 65}, r"num_frames \(frames\) must be between 1 and 64"),
        ({"scheduler": "euler"}, "recipe svd does not take --scheduler"),
    ],
)
def test_bad_requests_are_refused_before_loading(picture, options, message) -> None:
    from imagegen.recipes import get_recipe

    with pytest.raises(InvalidRequest, match=message):
        svd(picture, **options).resolve(get_recipe("svd"))


def test_an_input_that_is_not_an_image_fails_before_loading(tmp_path) -> None:
    from imagegen.errors import InvalidImage
    from imagegen.recipes import get_recipe

    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InvalidImage, match="input image .*notes.png cannot be read"):
        svd(tmp_path / "notes.png").resolve(get_recipe("svd"))


def test_progress_counts_every_video(engine, picture) -> None:
    steps = []
    engine.generate(svd(picture, seed=1, num_images=2, num_inference_steps=2), on_step=lambda *step: steps.append(step))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
