"""Tiny random-weight stand-ins of madebyollin/taesd and madebyollin/taesdxl (diffusers' AutoencoderTiny), in the
real repos' layout: config.json and diffusion_pytorch_model.safetensors at the root.

The real ones decode 8x (three upsamplings) like the real VAEs; these decode 2x, like the tiny SD 1.5 and SDXL VAEs
of tiny_sd15 and tiny_models, so that they fit the tiny pipelines exactly as the real ones fit the real pipelines.
"""

from __future__ import annotations

from pathlib import Path

from tiny_models import _build_repo

TAESD = "madebyollin/taesd"
TAESDXL = "madebyollin/taesdxl"
_SEEDS = {TAESD: 71, TAESDXL: 72}


def build_taesd(cache_dir: Path) -> None:
    """Write both tiny-VAE repos into ``cache_dir``, replacing earlier builds."""
    for repo_id, seed in _SEEDS.items():
        _build_repo(cache_dir, repo_id, lambda folder, seed=seed: _write_tiny_vae(folder, seed))


def _write_tiny_vae(folder: Path, seed: int) -> None:
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    AutoencoderTiny(encoder_block_out_channels=(16, 16), decoder_block_out_channels=(16, 16),
                    num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)).save_pretrained(folder)
