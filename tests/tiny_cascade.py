"""Tiny random-weight copies of the two Stable Cascade repos, in the Hugging Face hub cache layout.

``stabilityai/stable-cascade-prior`` holds the text-to-image-embedding stage (StableCascadePriorPipeline) and
``stabilityai/stable-cascade`` the decoder that turns those embeddings into pixels (StableCascadeDecoderPipeline).
Both are written with `tiny_models._build_repo`, so they resolve through huggingface_hub like the SDXL fixtures and
two builds are byte-identical.

The sizes come from diffusers' own Stable Cascade pipeline tests, shrunk further, but every config keeps the real
repos' structure and the numbers that tie the stages together: the prior's 16 output channels are the decoder's
``effnet_in_channels``, the decoder works on 4-channel latents with ``patch_size`` 2 at four levels, and the
pipelines keep the real ``resolution_multiple`` (42.67) and ``latent_dim_scale`` (10.67).  With the VQGAN's 4x
upsampling a request of 128x128 therefore comes out at 128x128 (3x3 embeddings, 32x32 latents), as 1024x1024 does
with the real models (24x24, 256x256); 64x64 does not work with the real configs either (21x21 latents do not
split into 2x2 patches).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from tiny_models import (
    _EOS,
    _build_repo,
    _clip_tokenizer,
    _text_config,
    _Tokenizer,
    _write_tokenizer,
    write_modelscope_copy,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, StableCascadeUNet
    from transformers import CLIPTextModelWithProjection

CASCADE_PRIOR = "stabilityai/stable-cascade-prior"
CASCADE_DECODER = "stabilityai/stable-cascade"
CASCADE_PRIOR_MS = "AI-ModelScope/stable-cascade-prior"
CASCADE_DECODER_MS = "AI-ModelScope/stable-cascade"

# Smallest request size whose output has the requested size (see the module docstring).
CASCADE_TEST_SIZE = 128

# Per-component seeds, apart from tiny_models' repos (0-400).
_PRIOR_SEED = 500
_DECODER_SEED = 600
# Both real repos ship the same OpenCLIP bigG text encoder, so both tiny ones get the same weights.
_TEXT_ENCODER_SEED = 700

# The real repos' scheduler/scheduler_config.json.
_SCHEDULER = {"_class_name": "DDPMWuerstchenScheduler", "s": 0.008, "scaler": 1.0}

_TEXT_WIDTH = 32  # hidden size and projection size, both 1280 in bigG
# The image encoder projects to a width of its own (CLIP ViT-L: 768) so that a mixed-up embedding fails loudly.
_IMAGE_PROJECTION_DIM = 24
_IMAGE_SIZE = 32
_EFFNET_CHANNELS = 16  # the prior's latent channels, which the decoder reads as EfficientNet features
_RES, _TIME, _ATTN = "SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"


def build_cascade(cache_dir: Path) -> None:
    """Write both Stable Cascade repos into ``cache_dir``, replacing earlier builds."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    _build_repo(cache_dir, CASCADE_PRIOR, _write_prior_pipeline)
    _build_repo(cache_dir, CASCADE_DECODER, _write_decoder_pipeline)


def write_old_key_decoder_copy(hf_cache_dir: Path, modelscope_cache_dir: Path) -> Path:
    """A ModelScope copy of the decoder repo whose ``decoder/config.json`` says ``c_in`` where diffusers reads
    ``in_channels``, and the model folder it is in.

    That is the config of a user who edited it as the reference tutorial's tip says (``c_in`` is the original Würstchen
    code's name).  diffusers ignores the unknown key and builds the UNet with its default ``in_channels=16``
    instead of the real 4, so loading fails with "embedding.1.weight expected shape ... but got ...".
    """
    folder = write_modelscope_copy(hf_cache_dir, modelscope_cache_dir, CASCADE_DECODER, CASCADE_DECODER_MS)
    config_path = folder / "decoder" / "config.json"
    config = json.loads(config_path.read_text())
    config = {("c_in" if key == "in_channels" else key): value for key, value in config.items()}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def _write_prior_pipeline(folder: Path) -> None:
    """stabilityai/stable-cascade-prior: prior UNet, text encoder, and the CLIP image encoder used for image
    prompts, with fp32 weights and, beside them, the ``bf16`` variant."""
    import torch
    from diffusers import DDPMWuerstchenScheduler, StableCascadePriorPipeline
    from transformers import (
        CLIPImageProcessor,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    tokenizer = _write_cascade_tokenizer(folder)
    torch.manual_seed(_PRIOR_SEED + 1)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=_IMAGE_SIZE,
        patch_size=4, projection_dim=_IMAGE_PROJECTION_DIM, hidden_act="quick_gelu",  # OpenAI CLIP ViT-L/14
    ))
    # CLIP ViT-L/14's preprocessing (bicubic resize, center crop, OpenAI mean/std) at the tiny encoder's size.
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": _IMAGE_SIZE},
                                           crop_size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE})
    pipe = StableCascadePriorPipeline(
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=_text_encoder(tokenizer),
        prior=_prior(),
        scheduler=DDPMWuerstchenScheduler.from_config(_SCHEDULER),
        feature_extractor=feature_extractor,
        image_encoder=image_encoder,
    )
    # Without torchvision transformers substitutes CLIPImageProcessorPil and records that; the repo names the class.
    _save_with_bf16_variant(pipe, folder, tokenizer, {"feature_extractor": ["transformers", "CLIPImageProcessor"]})


def _write_decoder_pipeline(folder: Path) -> None:
    """stabilityai/stable-cascade: decoder UNet, text encoder and Paella VQGAN, fp32 plus the ``bf16`` variant."""
    import torch
    from diffusers import DDPMWuerstchenScheduler, StableCascadeDecoderPipeline
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    from transformers import CLIPTokenizer

    tokenizer = _write_cascade_tokenizer(folder)
    torch.manual_seed(_DECODER_SEED + 1)
    # The real VQGAN (levels 2, embed_dim 384, 12 bottleneck blocks, 8192 codes) with fewer channels and blocks;
    # its 2x pixel shuffle and one 2x level make the 4x upsampling the pipelines' size arithmetic expects.
    vqgan = PaellaVQModel(levels=2, bottleneck_blocks=1, embed_dim=32, latent_channels=4, num_vq_embeddings=64,
                          scale_factor=0.3764)
    pipe = StableCascadeDecoderPipeline(
        decoder=_decoder(),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=_text_encoder(tokenizer),
        scheduler=DDPMWuerstchenScheduler.from_config(_SCHEDULER),
        vqgan=vqgan,
    )
    # diffusers 0.27, which converted the real repo, kept PaellaVQModel in diffusers/pipelines/wuerstchen/ and so
    # recorded that folder's name as the library.  Current diffusers keeps it in pipelines/deprecated/ and writes
    # "diffusers", under which it cannot load it either; the published name is what loaders must cope with.
    _save_with_bf16_variant(pipe, folder, tokenizer, {"vqgan": ["wuerstchen", "PaellaVQModel"]})


def _save_with_bf16_variant(pipe: DiffusionPipeline, folder: Path, tokenizer: _Tokenizer,
                            published_components: dict[str, list[str]]) -> None:
    """Save fp32 weights, then the ``bf16`` variant the real repos publish beside them, then put back what
    save_pretrained writes differently from the real repos: the tokenizer folder, the scheduler config and the
    ``published_components`` entries of model_index.json."""
    import torch

    pipe.save_pretrained(folder, safe_serialization=True)
    # Saved last, as tiny_models does with fp16: transformers then records the variant's dtype in config.json.
    pipe.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True, variant="bf16")
    shutil.rmtree(folder / "tokenizer")
    _write_tokenizer(folder / "tokenizer", tokenizer)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(_SCHEDULER, indent=2))
    model_index = json.loads((folder / "model_index.json").read_text())
    model_index.update(published_components)
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n")


def _write_cascade_tokenizer(folder: Path) -> _Tokenizer:
    """The OpenCLIP bigG tokenizer (pads with <|endoftext|>), written as tiny_models writes CLIP tokenizers."""
    tokenizer = _clip_tokenizer(pad_token=_EOS)
    _write_tokenizer(folder / "tokenizer", tokenizer)
    return tokenizer


def _text_encoder(tokenizer: _Tokenizer) -> CLIPTextModelWithProjection:
    """bigG's text tower: the prior reads its last hidden states and both stages its projected pooled output."""
    import torch
    from transformers import CLIPTextModelWithProjection

    config = _text_config(1, tokenizer, hidden_act="gelu", hidden_size=_TEXT_WIDTH)
    config.projection_dim = _TEXT_WIDTH
    torch.manual_seed(_TEXT_ENCODER_SEED)
    return CLIPTextModelWithProjection(config)


def _prior() -> StableCascadeUNet:
    """Stage C: diffusers' tiny prior test UNet (two levels, attention everywhere, no resampling between them as
    ``switch_level=(False,)`` says) with the real in/out channels and conditioning types, narrower."""
    import torch
    from diffusers import StableCascadeUNet

    torch.manual_seed(_PRIOR_SEED)
    return StableCascadeUNet(
        in_channels=_EFFNET_CHANNELS,
        out_channels=_EFFNET_CHANNELS,
        timestep_ratio_embedding_dim=64,
        patch_size=1,
        conditioning_dim=32,
        block_out_channels=(32, 32),
        num_attention_heads=(2, 2),
        down_num_layers_per_block=(1, 1),
        up_num_layers_per_block=(1, 1),
        down_blocks_repeat_mappers=(1, 1),
        up_blocks_repeat_mappers=(1, 1),
        block_types_per_layer=((_RES, _TIME, _ATTN), (_RES, _TIME, _ATTN)),
        clip_text_in_channels=_TEXT_WIDTH,
        clip_text_pooled_in_channels=_TEXT_WIDTH,
        clip_image_in_channels=_IMAGE_PROJECTION_DIM,
        clip_seq=4,
        dropout=(0.1, 0.1),
        self_attn=True,
        timestep_conditioning_type=("sca", "crp"),
        switch_level=(False,),
    )


def _decoder() -> StableCascadeUNet:
    """Stage B: diffusers' tiny decoder test UNet, laid out as the real one (four levels, attention only in the
    lower two, 2x2 patches of 4-channel latents, EfficientNet and pixel conditioning, "sca" only).

    ``in_channels`` must differ from diffusers' default of 16 for `write_old_key_decoder_copy` to fail as it does
    with the real decoder.
    """
    import torch
    from diffusers import StableCascadeUNet

    torch.manual_seed(_DECODER_SEED)
    return StableCascadeUNet(
        in_channels=4,
        out_channels=4,
        timestep_ratio_embedding_dim=64,
        patch_size=2,
        conditioning_dim=32,
        block_out_channels=(8, 16, 32, 32),
        num_attention_heads=(0, 0, 2, 2),
        down_num_layers_per_block=(1, 1, 1, 1),
        up_num_layers_per_block=(1, 1, 1, 1),
        down_blocks_repeat_mappers=(1, 1, 1, 1),
        up_blocks_repeat_mappers=(3, 3, 2, 2),
        block_types_per_layer=((_RES, _TIME), (_RES, _TIME), (_RES, _TIME, _ATTN), (_RES, _TIME, _ATTN)),
        clip_text_pooled_in_channels=_TEXT_WIDTH,
        clip_seq=4,
        effnet_in_channels=_EFFNET_CHANNELS,
        pixel_mapper_in_channels=3,
        dropout=(0.0, 0.0, 0.1, 0.1),
        self_attn=True,
        timestep_conditioning_type=("sca",),
        switch_level=None,
    )
