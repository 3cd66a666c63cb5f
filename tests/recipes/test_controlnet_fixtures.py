"""The tiny ControlNet fixtures resolve like the real repos, and the reference tutorial's canny recipe runs and is
steered by them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from reference_tutorial_controlnet import sdxl_controlnet_canny
from tiny_controlnet import (
    CONTROLNET_CANNY,
    CONTROLNET_CANNY_MODELSCOPE,
    CONTROLNET_DEPTH,
    VAE_FP16_FIX,
    VAE_FP16_FIX_MODELSCOPE,
    build_controlnets,
    edge_test_image,
    write_edge_test_image,
)
from tiny_models import SDXL_BASE, snapshot_path, write_modelscope_copy

PROMPT = "a photo of the cat and dog"
# What each real repo has at its root, less pickles, sample images and single-file checkpoints.
REPO_FILES = {
    CONTROLNET_CANNY: {"config.json", "diffusion_pytorch_model.safetensors"},
    CONTROLNET_DEPTH: {
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
    },
    VAE_FP16_FIX: {"config.json", "diffusion_pytorch_model.safetensors"},
}


@pytest.fixture(scope="module")
def canny_reference(controlnet_models: Path) -> tuple[list[Image.Image], Image.Image]:
    """The reference tutorial's canny recipe on `edge_test_image`, 3 steps instead of 50, shared by the tests that
    compare to it."""
    return sdxl_controlnet_canny(PROMPT, edge_test_image(), seed=7, steps=3)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.float64)


def test_repos_resolve_offline_with_the_real_files(controlnet_models: Path) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for repo_id, files in REPO_FILES.items():
        snapshot = Path(snapshot_download(repo_id))
        assert snapshot == snapshot_path(controlnet_models, repo_id)
        assert {path.name for path in snapshot.iterdir()} == files
    with pytest.raises(LocalEntryNotFoundError):  # the real canny repo has no fp16 variant either
        hf_hub_download(CONTROLNET_CANNY, "diffusion_pytorch_model.fp16.safetensors")


def test_controlnets_fit_the_tiny_sdxl_unet(controlnet_models: Path) -> None:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.load_config(SDXL_BASE, subfolder="unet")
    shared = (
        "block_out_channels",
        "cross_attention_dim",
        "addition_embed_type",
        "projection_class_embeddings_input_dim",
    )
    for repo_id in (CONTROLNET_CANNY, CONTROLNET_DEPTH):
        config = ControlNetModel.load_config(repo_id)
        assert {key: config[key] for key in shared} == {key: unet[key] for key in shared}
    depth = ControlNetModel.from_pretrained(CONTROLNET_DEPTH, variant="fp16", torch_dtype=torch.float16)
    assert depth.dtype == torch.float16
    with pytest.raises(OSError, match="fp16"):
        ControlNetModel.from_pretrained(CONTROLNET_CANNY, variant="fp16")


def test_fp16_fix_vae_can_replace_the_base_vae_and_keeps_the_real_config(controlnet_models: Path) -> None:
    from diffusers import AutoencoderKL

    base = AutoencoderKL.load_config(SDXL_BASE, subfolder="vae")
    vae = AutoencoderKL.from_pretrained(VAE_FP16_FIX)
    for key in ("block_out_channels", "latent_channels", "scaling_factor"):
        assert vae.config[key] == base[key]
    written = json.loads((snapshot_path(controlnet_models, VAE_FP16_FIX) / "config.json").read_text())
    assert "force_upcast" not in written
    assert vae.config.force_upcast  # diffusers' default fills the gap, as it does for the real repo


def test_builds_are_identical(controlnet_models: Path, tmp_path: Path) -> None:
    """The commit hash covers every file's content, so equal hashes mean byte-identical repos."""
    build_controlnets(tmp_path)
    for repo_id in REPO_FILES:
        assert snapshot_path(tmp_path, repo_id).name == snapshot_path(controlnet_models, repo_id).name


def test_modelscope_copies_load_from_their_folders(controlnet_models: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL, ControlNetModel

    controlnet_dir = write_modelscope_copy(controlnet_models, tmp_path, CONTROLNET_CANNY, CONTROLNET_CANNY_MODELSCOPE)
    vae_dir = write_modelscope_copy(controlnet_models, tmp_path, VAE_FP16_FIX, VAE_FP16_FIX_MODELSCOPE)
    assert controlnet_dir == tmp_path / "models" / "AI-ModelScope" / "controlnet-canny-sdxl-1___0"
    assert isinstance(ControlNetModel.from_pretrained(controlnet_dir), ControlNetModel)
    assert isinstance(AutoencoderKL.from_pretrained(vae_dir), AutoencoderKL)


def test_edge_test_image_has_edges_and_survives_files(tmp_path: Path) -> None:
    import cv2

    image = edge_test_image()
    assert (image.mode, image.size) == ("RGB", (64, 64))
    assert np.array_equal(np.asarray(image), np.asarray(edge_test_image()))
    edges = cv2.Canny(np.asarray(image), 100, 200)
    assert 0.03 < (edges > 0).mean() < 0.2
    assert edge_test_image((96, 48)).size == (96, 48)
    png = Image.open(write_edge_test_image(tmp_path / "canny.png"))
    assert np.array_equal(np.asarray(png), np.asarray(image))
    jpeg = Image.open(write_edge_test_image(tmp_path / "canny.jpg"))
    assert (jpeg.format, jpeg.size) == ("JPEG", (64, 64))
    assert 0.03 < (cv2.Canny(np.asarray(jpeg), 100, 200) > 0).mean() < 0.2


def test_canny_on_rgb_keeps_the_strongest_channel() -> None:
    """The reference tutorial runs cv2.Canny on the RGB array: an edge between two colours of equal brightness is
    kept, which a grayscale Canny would miss, and channel order (RGB or BGR) does not matter."""
    import cv2

    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :16], pixels[:, 16:] = (200, 60, 60), (60, 110, 200)  # grayscale 102 and 105
    assert cv2.Canny(pixels, 100, 200).any()
    assert not cv2.Canny(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), 100, 200).any()
    photo = np.asarray(edge_test_image())
    assert np.array_equal(cv2.Canny(photo, 100, 200), cv2.Canny(np.ascontiguousarray(photo[..., ::-1]), 100, 200))


def test_reference_tutorial_is_seeded_and_sized_by_the_control_image(
    canny_reference: tuple[list[Image.Image], Image.Image],
) -> None:
    import cv2

    images, control = canny_reference
    again, _ = sdxl_controlnet_canny(PROMPT, edge_test_image(), seed=7, steps=3)
    assert [image.size for image in images] == [(64, 64)]
    assert np.array_equal(_pixels(images[0]), _pixels(again[0]))
    edges = cv2.Canny(np.asarray(edge_test_image()), 100, 200)
    assert np.array_equal(np.asarray(control), np.stack([edges] * 3, axis=-1))


def test_output_size_is_the_control_size_floored_to_the_vae_scale(controlnet_models: Path) -> None:
    """The tiny VAE's scale factor is 2 (the real SDXL VAE's 8): 67x45 gives 66x44, one image per seed."""
    images, control = sdxl_controlnet_canny(PROMPT, edge_test_image((67, 45)), seed=7, steps=3, num_images=2)
    assert control.size == (67, 45)
    assert [image.size for image in images] == [(66, 44), (66, 44)]
    assert not np.array_equal(_pixels(images[0]), _pixels(images[1]))


def test_different_control_images_give_different_outputs(
    canny_reference: tuple[list[Image.Image], Image.Image],
) -> None:
    images, _ = canny_reference
    mirrored, _ = sdxl_controlnet_canny(PROMPT, ImageOps.mirror(edge_test_image()), seed=7, steps=3)
    assert np.abs(_pixels(images[0]) - _pixels(mirrored[0])).mean() > 5


def test_depth_controlnet_runs_with_a_prepared_control_image(controlnet_models: Path) -> None:
    """A depth map made elsewhere (near at the bottom, far at the top) goes to the pipeline as it is."""
    depth = np.broadcast_to(np.linspace(30, 230, 64, dtype=np.float32)[:, None], (64, 64)).astype(np.uint8)
    depth_map = Image.fromarray(np.stack([depth] * 3, axis=-1))
    images, control = sdxl_controlnet_canny(
        PROMPT, depth_map, seed=7, steps=3, controlnet_id=CONTROLNET_DEPTH, preprocess=False
    )
    flat, _ = sdxl_controlnet_canny(
        PROMPT, Image.new("RGB", (64, 64), (128, 128, 128)), seed=7, steps=3, controlnet_id=CONTROLNET_DEPTH,
        preprocess=False,
    )
    assert np.array_equal(np.asarray(control), np.asarray(depth_map))
    assert [image.size for image in images] == [(64, 64)]
    assert np.abs(_pixels(images[0]) - _pixels(flat[0])).mean() > 5
