"""The models of benchmarks/speed.py: random-weight SDXL-, SD 1.5- and TAESD-shaped repos at the real size or at a
"mid" size for CPUs, written into a Hugging Face cache under the real repo ids (see speed.py's docstring)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "imagegen-speed-benchmark.json"  # written into --cache after a complete build: what it was built from


@dataclass(frozen=True)
class Widths:
    """Channel widths and attention heads of the SDXL- and SD 1.5-shaped models; depths are always the real ones
    (UNet: 2 layers per block, SDXL transformer depth 1/2/10; text encoders 12 and 32 layers; VAE 2 per block)."""

    sdxl_unet: tuple[int, ...]  # block_out_channels; heads below are 64 channels each, as SDXL's
    sdxl_heads: tuple[int, ...]
    sd15_unet: tuple[int, ...]
    sd15_heads: int  # SD 1.5 has 8 heads at every level
    clip_l: tuple[int, int]  # hidden size, heads: OpenAI CLIP ViT-L, SD 1.5's and SDXL's first text encoder
    clip_g: tuple[int, int]  # OpenCLIP ViT-bigG, SDXL's second text encoder
    vae: tuple[int, ...]  # block_out_channels of the 8x AutoencoderKL (SD 1.5's and SDXL's are alike)
    vae_groups: int  # GroupNorm groups
    taesd: int  # AutoencoderTiny's channels (TAESD/TAESDXL: 64 in all four blocks)


SIZES = {
    # The real models: diffusers' configs of stable-diffusion-xl-base-1.0, stable-diffusion-v1-5 and taesd(xl).
    "full": Widths((320, 640, 1280), (5, 10, 20), (320, 640, 1280, 1280), 8, (768, 12), (1280, 20),
                   (128, 256, 512, 512), 32, 64),
    # Widths /5 (UNet, CLIP-G), /6 (CLIP-L), /5.3 (VAE, tiny VAE); SDXL keeps its 64-channel heads, SD 1.5 has
    # 32-128 channels per head (real: 40-160). One call at 512x512, batch 1, one thread of this 2-core AVX-512 CPU,
    # real -> mid: SDXL UNet 15.3 -> 0.91 s, SD 1.5 UNet 7.8 -> 0.68 s, VAE decode 17.7 -> 1.19 s, TAESD decode
    # 1.39 -> 0.070 s: VAE / UNet 1.15 -> 1.31 (SDXL) and 2.27 -> 1.76 (SD 1.5), TAESD / VAE 0.079 -> 0.059.
    "mid": Widths((64, 128, 256), (1, 2, 4), (64, 128, 256, 256), 2, (128, 2), (256, 4), (24, 48, 96, 96), 8, 12),
}


def build_cache(cache: Path, size: str, device: str) -> None:
    """Write the SDXL base, SDXL-Turbo, SD 1.5 and tiny-VAE repos at `size` into `cache`.

    Turbo and the base share one set of random weights (hard links; only the scheduler configs differ, as in the
    real repos), and so do TAESD and TAESDXL. Mid-size repos hold float32 files with an ``fp16`` variant beside them,
    as the real ones; full-size repos hold float16 weights under the default names only (imagegen falls back to
    them, the reference code loads them with torch_dtype=float16), which halves the disk and the build time.
    tests/tiny_taesd.py's tiny VAEs decode 2x to fit the tiny test pipelines; these decode 8x, as the real ones.
    """
    marker = cache / MARKER
    if marker.is_file():
        marker.unlink()  # an interrupted rebuild must not pass for the old build
    elif cache.is_dir() and any(cache.iterdir()):
        raise SystemExit(f"{cache} is not empty and was not built by this script; give an empty or new folder")
    import torch
    from tiny_models import (
        _SDXL_SCHEDULER,
        _TURBO_SCHEDULER,
        SDXL_BASE,
        SDXL_TURBO,
        _build_repo,
    )
    from tiny_sd15 import _SD15_SCHEDULER, SD15

    started = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    widths, full = SIZES[size], size == "full"
    # Random initialisation of billions of parameters takes minutes on a CPU and seconds on a GPU.
    build_device = device if full and device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory(dir=cache) as staging:
        folders = {name: Path(staging, name) for name in ("sdxl", "sd15", "taesd")}
        with torch.device(build_device):
            torch.manual_seed(0)
            _save(_sdxl_pipeline(folders["sdxl"], widths), folders["sdxl"], full)
            torch.manual_seed(1)
            _save(_sd15_pipeline(folders["sd15"], widths), folders["sd15"], full)
            torch.manual_seed(2)
            _save(_tiny_vae(widths), folders["taesd"], full, variant=False)
        for name, tokenizers in (("sdxl", ("tokenizer", "tokenizer_2")), ("sd15", ("tokenizer",))):
            _restore_tokenizers(folders[name], tokenizers)
        repos = [(SDXL_BASE, "sdxl", _SDXL_SCHEDULER), (SDXL_TURBO, "sdxl", _TURBO_SCHEDULER),
                 (SD15, "sd15", _SD15_SCHEDULER), ("madebyollin/taesd", "taesd", None),
                 ("madebyollin/taesdxl", "taesd", None)]
        for repo, name, scheduler in repos:
            _build_repo(cache, repo, lambda folder, name=name, scheduler=scheduler: _link(folders[name], folder,
                                                                                           scheduler))
    print(f"built the {size}-size repos in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def _sdxl_pipeline(folder: Path, w: Widths) -> Any:
    import diffusers
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from tiny_models import _EOS, _SDXL_SCHEDULER, _clip_tokenizer, _write_tokenizer
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    # The real tokenizer pads with <|endoftext|>, tokenizer_2 with "!"; tiny_models' small BPE vocabulary stands in
    # for CLIP's 49408 tokens (the embedding table is a lookup: its size costs no time).
    tokenizers = (_clip_tokenizer(pad_token=_EOS), _clip_tokenizer(pad_token="!"))
    for name, tokenizer in zip(("tokenizer", "tokenizer_2"), tokenizers):
        _write_tokenizer(folder / name, tokenizer)
    hidden, hidden_2 = w.clip_l[0], w.clip_g[0]
    unet = UNet2DConditionModel(
        block_out_channels=w.sdxl_unet, layers_per_block=2, sample_size=128, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=w.sdxl_heads, transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=6 * 256 + hidden_2, cross_attention_dim=hidden + hidden_2,
        norm_num_groups=32)
    return StableDiffusionXLPipeline(
        vae=_vae(w, scaling_factor=0.13025), unet=unet,  # SDXL's latent scaling factor
        text_encoder=_clip(CLIPTextModel, tokenizers[0], w.clip_l, layers=12, act="quick_gelu"),
        text_encoder_2=_clip(CLIPTextModelWithProjection, tokenizers[1], w.clip_g, layers=32, act="gelu"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        scheduler=_on_cpu(lambda: getattr(diffusers, _SDXL_SCHEDULER["_class_name"]).from_config(_SDXL_SCHEDULER)))


def _sd15_pipeline(folder: Path, w: Widths) -> Any:
    """Without the safety checker, which neither imagegen nor the reference code (safety_checker=None) loads."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tiny_models import _EOS, _clip_tokenizer, _write_tokenizer
    from tiny_sd15 import _SD15_SCHEDULER
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = _clip_tokenizer(pad_token=_EOS)
    _write_tokenizer(folder / "tokenizer", tokenizer)
    unet = UNet2DConditionModel(
        block_out_channels=w.sd15_unet, layers_per_block=2, sample_size=64, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=w.sd15_heads, cross_attention_dim=w.clip_l[0], norm_num_groups=32)
    return StableDiffusionPipeline(
        vae=_vae(w, scaling_factor=0.18215), unet=unet,
        text_encoder=_clip(CLIPTextModel, tokenizer, w.clip_l, layers=12, act="quick_gelu"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        scheduler=_on_cpu(lambda: PNDMScheduler.from_config(_SD15_SCHEDULER)), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def _on_cpu(make: Callable[[], Any]) -> Any:
    """Schedulers keep their tables on the CPU (diffusers moves them there), whatever device the models start on."""
    import torch

    with torch.device("cpu"):
        return make()


def _clip(cls: Any, tokenizer: Any, width: tuple[int, int], *, layers: int, act: str) -> Any:
    from tiny_models import _BOS, _EOS
    from transformers import CLIPTextConfig

    hidden, heads = width
    return cls(CLIPTextConfig(
        vocab_size=len(tokenizer.vocab), bos_token_id=tokenizer.vocab[_BOS], eos_token_id=tokenizer.vocab[_EOS],
        pad_token_id=tokenizer.pad_token_id, hidden_size=hidden, intermediate_size=4 * hidden,
        num_attention_heads=heads, num_hidden_layers=layers, max_position_embeddings=77, hidden_act=act,
        projection_dim=hidden))


def _vae(w: Widths, *, scaling_factor: float) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=w.vae, layers_per_block=2, latent_channels=4, norm_num_groups=w.vae_groups,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         scaling_factor=scaling_factor)


def _tiny_vae(w: Widths) -> Any:
    from diffusers import AutoencoderTiny

    return AutoencoderTiny(encoder_block_out_channels=(w.taesd,) * 4, decoder_block_out_channels=(w.taesd,) * 4)


def _save(model: Any, folder: Path, full: bool, *, variant: bool = True) -> None:
    import torch

    model.to("cpu")
    if full:
        model.to(torch.float16).save_pretrained(folder, safe_serialization=True)
        return
    model.save_pretrained(folder, safe_serialization=True)
    if variant:  # saved last, as tiny_models does: config.json then records float16, as in the real repos
        model.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")


def _restore_tokenizers(folder: Path, names: Sequence[str]) -> None:
    """save_pretrained rewrote the tokenizer folders with current defaults; put back the real repos' four files."""
    import shutil

    from tiny_models import _EOS, _clip_tokenizer, _write_tokenizer

    for name, pad in zip(names, (_EOS, "!")):
        shutil.rmtree(folder / name)
        _write_tokenizer(folder / name, _clip_tokenizer(pad_token=pad))


def _link(source: Path, folder: Path, scheduler: dict[str, Any] | None) -> None:
    """Hard-link `source`'s files into `folder`; write the repo's own scheduler config (a new file, not a link)."""
    import shutil

    shutil.copytree(source, folder, copy_function=os.link, dirs_exist_ok=True)
    if scheduler is not None:
        path = folder / "scheduler" / "scheduler_config.json"
        path.unlink()
        path.write_text(json.dumps(scheduler, indent=2))


# ------------------------------------------------------------------------------------------- one recipe's cases
