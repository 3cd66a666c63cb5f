"""The tiny Stable Video Diffusion XT repo loads and animates like the real one; the reference example runs on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reference_tutorial_svd import svd
from tiny_models import snapshot_path
from tiny_svd import (
    SVD_TEST_FRAMES,
    SVD_TEST_HEIGHT,
    SVD_TEST_WIDTH,
    SVD_XT,
    SVD_XT_NUM_FRAMES,
    build_svd,
    svd_test_image,
)

# Weighted components and their weights file stem; each has the fp32 file and the "fp16" variant.
WEIGHTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "image_encoder": "model"}


@pytest.fixture(scope="module")
def video(svd_models: Path) -> list:
    """The reference example's frames for seed 7 at the test defaults (10 frames of 64x40, 25 steps)."""
    return svd(svd_test_image(), seed=7)


def _pixels(frames: list) -> np.ndarray:
    return np.stack([np.asarray(frame).astype(float) for frame in frames])


def test_reference_returns_the_requested_frames(video: list) -> None:
    assert len(video) == SVD_TEST_FRAMES
    assert {frame.size for frame in video} == {(SVD_TEST_WIDTH, SVD_TEST_HEIGHT)}
    assert {frame.mode for frame in video} == {"RGB"}
    pixels = _pixels(video)
    assert pixels.std() > 10
    # A video, not one picture repeated: every frame differs from the one before it.
    assert all(np.abs(pixels[i + 1] - pixels[i]).mean() > 1 for i in range(len(pixels) - 1))


def test_reference_is_seeded(video: list) -> None:
    """Same seed, same frames bit for bit (float32 on the CPU); another seed, another video."""
    assert np.array_equal(_pixels(svd(svd_test_image(), seed=7)), _pixels(video))
    assert np.abs(_pixels(svd(svd_test_image(), seed=8)) - _pixels(video)).mean() > 5


def test_decode_chunk_size_changes_frames_only_when_it_splits_the_video(video: list) -> None:
    """The temporal decoder mixes the frames it decodes together: decoding 10 frames in one chunk gives other
    pixels than the example's chunks of 8 and 2, and any chunk of at least num_frames gives the same ones."""
    whole = _pixels(svd(svd_test_image(), seed=7, decode_chunk_size=SVD_TEST_FRAMES))
    assert np.array_equal(_pixels(svd(svd_test_image(), seed=7, decode_chunk_size=2 * SVD_TEST_FRAMES)), whole)
    assert np.abs(whole - _pixels(video)).mean() > 1


def test_builds_are_identical(svd_models: Path, tmp_path: Path) -> None:
    """The commit hash covers every file's content, so equal hashes mean byte-identical repos."""
    build_svd(tmp_path)
    assert snapshot_path(tmp_path, SVD_XT).name == snapshot_path(svd_models, SVD_XT).name


def test_repo_has_the_real_layout(svd_models: Path) -> None:
    snapshot = snapshot_path(svd_models, SVD_XT)
    files = {path.relative_to(snapshot).as_posix() for path in snapshot.rglob("*") if path.is_file()}
    weights = {f"{name}/{stem}{variant}.safetensors" for name, stem in WEIGHTS.items() for variant in ("", ".fp16")}
    configs = {"model_index.json", "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json",
               "unet/config.json", "vae/config.json", "image_encoder/config.json"}
    assert files == weights | configs
    index = json.loads((snapshot / "model_index.json").read_text())
    assert index["_class_name"] == "StableVideoDiffusionPipeline"
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]
    assert index["unet"] == ["diffusers", "UNetSpatioTemporalConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLTemporalDecoder"]
    scheduler = json.loads((snapshot / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"
    assert scheduler["use_karras_sigmas"] is True
    assert (scheduler["sigma_min"], scheduler["sigma_max"]) == (0.002, 700.0)
    unet = json.loads((snapshot / "unet" / "config.json").read_text())
    assert unet["num_frames"] == SVD_XT_NUM_FRAMES
    assert unet["in_channels"] == 8


@pytest.mark.parametrize("component", sorted(WEIGHTS))
def test_fp16_variants_sit_beside_the_full_weights(svd_models: Path, component: str) -> None:
    from safetensors import safe_open

    folder = snapshot_path(svd_models, SVD_XT) / component
    stem = WEIGHTS[component]
    for name, dtype in ((f"{stem}.safetensors", "torch.float32"), (f"{stem}.fp16.safetensors", "torch.float16")):
        with safe_open(folder / name, framework="pt") as weights:
            dtypes = {str(weights.get_tensor(key).dtype) for key in weights.keys()}
        assert dtypes == {dtype}


def test_test_image_is_deterministic() -> None:
    image = svd_test_image()
    assert image.size == (SVD_TEST_WIDTH, SVD_TEST_HEIGHT)
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(svd_test_image()))
    assert np.asarray(image).std() > 20
    assert svd_test_image((128, 80)).size == (128, 80)
