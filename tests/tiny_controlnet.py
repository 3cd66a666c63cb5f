"""Tiny random-weight copies of the SDXL ControlNet repos and the fp16-fix VAE, beside tiny_models' SDXL base.

`build_controlnets` writes them into the same Hugging Face cache layout as `tiny_models.build_hf_cache`, with the
files the real repos have at their roots (pickle ``.bin`` files, sample images and single-file VAE checkpoints
left out), so ``ControlNetModel.from_pretrained("diffusers/controlnet-canny-sdxl-1.0")`` and friends resolve
offline exactly as on a user's machine.  The ControlNets fit the tiny SDXL UNet and the VAE can replace the tiny
base VAE.  `edge_test_image` is a small photo-like picture whose Canny edges are worth conditioning on.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from tiny_models import _build_repo, _unet, _vae

if TYPE_CHECKING:
    from diffusers import ControlNetModel
    from PIL.Image import Image

CONTROLNET_CANNY = "diffusers/controlnet-canny-sdxl-1.0"
CONTROLNET_DEPTH = "diffusers/controlnet-depth-sdxl-1.0"
VAE_FP16_FIX = "madebyollin/sdxl-vae-fp16-fix"
# The ids under which the reference tutorial downloads the same repos from ModelScope.
CONTROLNET_CANNY_MODELSCOPE = "AI-ModelScope/controlnet-canny-sdxl-1.0"
VAE_FP16_FIX_MODELSCOPE = "AI-ModelScope/sdxl-vae-fp16-fix"

# Away from tiny_models' per-repo seeds (all below 500), so no ControlNet starts from the base UNet's exact weights.
_REPO_SEEDS = {CONTROLNET_CANNY: 1000, CONTROLNET_DEPTH: 1100, VAE_FP16_FIX: 1200}

# The real canny repo has only full-precision weights; the depth repo also ships the fp16 variant.
_HAS_FP16_VARIANT = {CONTROLNET_CANNY: False, CONTROLNET_DEPTH: True}

# madebyollin/sdxl-vae-fp16-fix's config.json was written by diffusers 0.18 and never updated: it has exactly these
# keys (and the two below), no "force_upcast" in particular, so diffusers fills in force_upcast=True when loading it.
_FP16_FIX_VAE_CONFIG_KEYS = (
    "_class_name",
    "act_fn",
    "block_out_channels",
    "down_block_types",
    "in_channels",
    "latent_channels",
    "layers_per_block",
    "norm_num_groups",
    "out_channels",
    "sample_size",
    "scaling_factor",
    "up_block_types",
)
_FP16_FIX_VAE_CONFIG_VERSION = {"_diffusers_version": "0.18.0.dev0", "_name_or_path": "."}

# The conditioning embedding halves the control image once per entry after the first, down to the latent size:
# 2 entries match the tiny VAE's 2x latent scale as the real repos' 4 (16, 32, 96, 256) match SDXL's 8x.
_CONDITIONING_EMBEDDING_OUT_CHANNELS = (16, 32)
# Makes the control image's embedding outweigh the latent features it is added to (see `_controlnet`).
_CONTROL_EMBEDDING_GAIN = 10.0


def build_controlnets(cache_dir: Path, *, scale: int = 1) -> None:
    """Write the canny and depth ControlNets and the fp16-fix VAE into ``cache_dir``, replacing earlier builds.

    ``scale`` must be the one the SDXL base in the same cache was built with, so the ControlNets fit its UNet.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    for repo_id in (CONTROLNET_CANNY, CONTROLNET_DEPTH):
        _build_repo(cache_dir, repo_id, partial(_write_controlnet, repo_id=repo_id, scale=scale))
    _build_repo(cache_dir, VAE_FP16_FIX, partial(_write_fp16_fix_vae, scale=scale))


def edge_test_image(size: tuple[int, int] = (64, 64)) -> Image:
    """A deterministic photo-like RGB picture: a lit sky-to-ground gradient with a sun, a house and a tree.

    Every shape has a soft shading gradient inside and a strong colour step at its border, so ``cv2.Canny`` at the
    reference tutorial's 100/200 thresholds finds the outlines and little else, as it would on a photo.  Sizes are
    relative, so any ``(width, height)`` gives the same scene.
    """
    import numpy as np
    from PIL import Image as PILImage

    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)  # 0 at the left/top edge, 1 at the right/bottom one

    def shade(red: object, green: object, blue: object) -> np.ndarray:
        """Per-pixel colour from channels that are constants or functions of (u, v)."""
        return np.stack(np.broadcast_arrays(red, green, blue, u)[:3], axis=-1)

    sky, ground = shade(90 + 80 * v, 140 + 70 * v, 235 - 20 * u), shade(60 + 40 * u, 120 - 30 * v, 50)
    pixels = np.where((v > 0.62)[..., None], ground, sky)
    shapes = [
        ((u - 0.8) ** 2 + (v - 0.2) ** 2 < 0.12**2, shade(250, 220 - 60 * v, 80 + 40 * u)),  # sun
        ((u > 0.15) & (u < 0.5) & (v > 0.45) & (v < 0.8), shade(200 - 60 * u, 170 - 40 * v, 130)),  # wall
        ((v > 0.25) & (v <= 0.45) & (np.abs(u - 0.325) < (v - 0.25) * 1.1), shade(150, 40 + 40 * v, 40)),  # roof
        ((u > 0.28) & (u < 0.37) & (v > 0.6) & (v < 0.8), shade(70 + 30 * v, 45, 30)),  # door
        ((np.abs(u - 0.75) < 0.025) & (v > 0.6) & (v < 0.85), shade(100, 60, 30)),  # trunk
        ((u - 0.75) ** 2 / 0.1**2 + (v - 0.5) ** 2 / 0.14**2 < 1, shade(30, 110 + 60 * (0.64 - v), 40)),  # crown
    ]
    for mask, colour in shapes:
        pixels[mask] = colour[mask]
    return PILImage.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="RGB")


def write_edge_test_image(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """Save `edge_test_image` at ``path`` in the format its suffix names (``.jpg``/``.jpeg`` or ``.png``).

    JPEG is written at a fixed quality so its bytes only depend on the size (and on Pillow's libjpeg).
    """
    image = edge_test_image(size)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path)
    return path


def _write_controlnet(folder: Path, *, repo_id: str, scale: int) -> None:
    """config.json and the weights at the repo root, plus ``*.fp16.safetensors`` where the real repo has it."""
    import torch

    controlnet = _controlnet(scale, _REPO_SEEDS[repo_id])
    controlnet.save_pretrained(folder, safe_serialization=True)
    if _HAS_FP16_VARIANT[repo_id]:
        controlnet.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")


def _controlnet(scale: int, seed: int) -> ControlNetModel:
    """A ControlNet copied from a seeded tiny SDXL UNet, as ControlNet training starts from the base UNet.

    ``from_unet`` zero-initialises the "zero convolutions" (the conditioning embedding's last conv and the
    per-block output convs), so an untrained ControlNet adds exactly nothing to the UNet.  PyTorch's default
    initialisation would not do either: through the embedding's five convs it shrinks the control image's
    spatial signal to about 1% of the latent features it is added to, leaving only bias.  So the embedding and
    the zero convolutions get seeded He-initialised weights (which keep the signal's scale through SiLU layers),
    no bias, and the embedding's output a further gain: at the reference tutorial's conditioning scale of 0.5, two
    different edge maps then change a 3-step 64x64 image by about 10 levels on average, as a trained ControlNet
    visibly would.
    """
    import torch
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(
        _unet(scale, seed), conditioning_embedding_out_channels=_CONDITIONING_EMBEDDING_OUT_CHANNELS
    )
    embedding = controlnet.controlnet_cond_embedding
    convs = [
        embedding.conv_in,
        *embedding.blocks,
        embedding.conv_out,
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
    ]
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for conv in convs:
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            torch.nn.init.zeros_(conv.bias)
        embedding.conv_out.weight.mul_(_CONTROL_EMBEDDING_GAIN)
    return controlnet


def _write_fp16_fix_vae(folder: Path, *, scale: int) -> None:
    """A tiny VAE with the SDXL base VAE's latent channels and scaling factor, in the real repo's root layout.

    The real repo ships full-precision weights only (``diffusion_pytorch_model.safetensors``; its ``.bin`` and
    the single-file ``sdxl_vae.safetensors``/``sdxl.vae.safetensors`` copies are left out) and the old config.
    """
    vae = _vae(scale, _REPO_SEEDS[VAE_FP16_FIX])
    vae.save_pretrained(folder, safe_serialization=True)
    config_path = folder / "config.json"
    saved = json.loads(config_path.read_text())
    config = {key: saved[key] for key in _FP16_FIX_VAE_CONFIG_KEYS} | _FP16_FIX_VAE_CONFIG_VERSION
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
