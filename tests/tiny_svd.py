"""A tiny random-weight copy of Stable Video Diffusion XT, in the Hugging Face hub cache layout.

``stabilityai/stable-video-diffusion-img2vid-xt`` is a StableVideoDiffusionPipeline: a spatio-temporal UNet, a VAE
whose decoder mixes neighbouring frames (AutoencoderKLTemporalDecoder), OpenCLIP ViT-H's image tower as the image
encoder, its CLIPImageProcessor and an EulerDiscreteScheduler.  `build_svd` writes it with
`tiny_models._build_repo`, so it resolves through huggingface_hub like the other fixtures and two builds are
byte-identical.

The sizes come from diffusers' StableVideoDiffusionPipelineFastTests, but every config keeps the real repo's
structure and the numbers that tie the components together: 8 UNet input channels (4 noisy + 4 image latents),
3 micro-conditioning numbers (fps, motion bucket, noise augmentation) of ``addition_time_embed_dim`` each, a
cross-attention width equal to the image encoder's projection, ``num_frames`` 25, the real scheduler config and
feature extractor config.  The image encoder keeps the real 224x224 input: the pipeline resizes a PIL image to
224x224 itself before the CLIP preprocessing, whatever the processor config says.

The VAE keeps the real four levels and so the real 8x downsampling: a 64x40 video has 8x5 latents, which the
two-level UNet halves once (to 4x3) and upsamples back to the odd size, as diffusers' UNets do for any size that
does not divide evenly.  Left out of the real repo: the root-level original-format checkpoints
(``svd_xt.safetensors``, ``svd_xt_image_decoder.safetensors``, for Stability's generative-models code and ComfyUI,
not read by diffusers), the README, LICENSE and sample media.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiny_models import _build_repo

if TYPE_CHECKING:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from PIL.Image import Image
    from transformers import CLIPVisionModelWithProjection

SVD_XT = "stabilityai/stable-video-diffusion-img2vid-xt"

# The real UNet config's frame count (14 for stable-video-diffusion-img2vid): the pipeline's default num_frames.
SVD_XT_NUM_FRAMES = 25
# A small video size (multiples of 8, as the pipeline requires) and a short clip, for tests: 10 frames decode
# in chunks of 8 and 2 with the example's decode_chunk_size=8, as 25 frames do in chunks of 8, 8, 8 and 1.
SVD_TEST_WIDTH = 64
SVD_TEST_HEIGHT = 40
SVD_TEST_FRAMES = 10

# Per-component seeds, apart from the other fixtures' (0-1699).
_SEED = 2500

# The real repo's scheduler/scheduler_config.json, verbatim: EDM-style Karras sigmas between 0.002 and 700
# with v-prediction and continuous timesteps.
_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.24.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}
# The real repo's feature_extractor/preprocessor_config.json as a public mirror of the repo has it (OpenAI CLIP
# mean/std at 224x224).  The pipeline only normalizes with it (it resizes to 224x224 itself, without cropping).
_FEATURE_EXTRACTOR: dict[str, Any] = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}

_IMAGE_EMBED_DIM = 32  # the image encoder's projection_dim and the UNet's cross_attention_dim (1024 in ViT-H)
_ADDITION_TIME_EMBED_DIM = 32  # 256 in the real UNet; 3 micro-conditioning numbers make 96 (real: 768)


def build_svd(cache_dir: Path) -> None:
    """Write stable-video-diffusion-img2vid-xt into ``cache_dir`` (huggingface_hub's layout), replacing an
    earlier build."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    _build_repo(cache_dir, SVD_XT, _write_svd_pipeline)


def svd_test_image(size: tuple[int, int] = (SVD_TEST_WIDTH, SVD_TEST_HEIGHT)) -> Image:
    """A deterministic RGB picture to animate: a sky gradient, a sun, hills and a house, at ``size`` (w, h).

    Drawn in proportions of the size, so any size shows the same scene; no randomness and no fonts.
    """
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / max(height - 1, 1)
        draw.line([(0, y), (width, y)], fill=(int(40 + 120 * t), int(90 + 110 * t), int(200 + 40 * t)))
    sun = min(width, height) * 0.15
    draw.ellipse([width * 0.72 - sun, height * 0.25 - sun, width * 0.72 + sun, height * 0.25 + sun],
                 fill=(250, 210, 60))
    draw.ellipse([-width * 0.3, height * 0.55, width * 0.7, height * 1.6], fill=(60, 150, 70))
    draw.ellipse([width * 0.35, height * 0.65, width * 1.3, height * 1.5], fill=(40, 120, 55))
    draw.rectangle([width * 0.15, height * 0.5, width * 0.35, height * 0.75], fill=(180, 60, 50))
    draw.polygon([(width * 0.12, height * 0.5), (width * 0.25, height * 0.35), (width * 0.38, height * 0.5)],
                 fill=(110, 40, 30))
    return image


def _write_svd_pipeline(folder: Path) -> None:
    """The StableVideoDiffusionPipeline folder: fp32 weights and, beside them, the ``fp16`` variant the real repo
    publishes for the UNet, the VAE and the image encoder."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from transformers import CLIPImageProcessor

    pipe = StableVideoDiffusionPipeline(
        vae=_vae(),
        image_encoder=_image_encoder(),
        unet=_unet(),
        scheduler=EulerDiscreteScheduler.from_config(_SCHEDULER),
        feature_extractor=CLIPImageProcessor(**_FEATURE_EXTRACTOR),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # Saved last, as tiny_models does: transformers then records float16 as the image encoder's dtype in its
    # config.json, so loaders that pass no torch_dtype get the same dtype as from a hub repo saved that way.
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(_SCHEDULER, indent=2))
    # Without torchvision transformers saves the processor as CLIPImageProcessorPil and model_index.json says so;
    # the real repo names CLIPImageProcessor in both.
    (folder / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(_FEATURE_EXTRACTOR, indent=2))
    index = json.loads((folder / "model_index.json").read_text())
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _unet() -> UNetSpatioTemporalConditionModel:
    """diffusers' tiny SVD test UNet (two levels, cross-attention in the upper one), with the real repo's
    ``num_frames`` and per-level head counts as a tuple as there."""
    import torch
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(_SEED)
    return UNetSpatioTemporalConditionModel(
        sample_size=SVD_TEST_WIDTH // 8,  # latent size; the pipeline never reads it (its default size is 576x1024)
        in_channels=8,  # noisy latents + the conditioning image's latents, concatenated per frame
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        addition_time_embed_dim=_ADDITION_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=3 * _ADDITION_TIME_EMBED_DIM,
        layers_per_block=2,
        cross_attention_dim=_IMAGE_EMBED_DIM,
        transformer_layers_per_block=1,
        num_attention_heads=(2, 4),
        num_frames=SVD_XT_NUM_FRAMES,
    )


def _vae() -> AutoencoderKLTemporalDecoder:
    """The real VAE's layout (four levels, so 8x downsampling; two layers per block; SD's latent scaling factor;
    ``force_upcast``) at the widths of diffusers' tiny SVD test VAE; the decoder mixes frames in time like the real
    one, so frames decoded in different chunks differ."""
    import torch
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(_SEED + 1)
    return AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),  # real: 128, 256, 512, 512
        layers_per_block=2,
        latent_channels=4,
        sample_size=SVD_TEST_WIDTH,
        scaling_factor=0.18215,
        force_upcast=True,
    )


def _image_encoder() -> CLIPVisionModelWithProjection:
    """OpenCLIP ViT-H/14's image tower (gelu, 224x224 in 14x14 patches) at the width of diffusers' test encoder."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(_SEED + 2)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=224,
        patch_size=14,
        projection_dim=_IMAGE_EMBED_DIM,
        hidden_act="gelu",
    ))
