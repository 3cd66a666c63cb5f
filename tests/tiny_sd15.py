"""Tiny random-weight Stable Diffusion 1.5 repos and LoRA files, laid out where users have them.

`build_sd15` writes ``stable-diffusion-v1-5/stable-diffusion-v1-5`` into a Hugging Face cache the way
tiny_models.py writes the SDXL repos.  The reference tutorial's LoRA section takes its models from ModelScope
instead: a civitai checkpoint converted to diffusers and kept in the ``v7`` sub-folder of
``YorickHe/majicmixRealistic_v6`` (`write_majicmix_modelscope`) and a kohya-format style LoRA,
``dunhuang.safetensors`` in ``PaperCloud/zju19_dunhuang_style_lora`` (`write_dunhuang_modelscope`).  `write_loras`
fills a user's LoRA folder with the two formats people download: diffusers/PEFT files, as diffusers' training scripts
save them, and kohya-ss files, as civitai serves them, for SD 1.5 and for the tiny SDXL base.

Weights are random but seeded, so builds are byte-identical; the LoRA weights are large enough that a LoRA visibly
changes a 64x64 image (tests/recipes/test_sd15_fixtures.py checks more than 5 levels of mean pixel difference).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tiny_models import (
    _EOS,
    _build_repo,
    _clip_tokenizer,
    _hidden_size_2,
    _text_config,
    _unet,
    _write_tokenizer,
    write_modelscope_copy,
)

if TYPE_CHECKING:
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MAJICMIX = "YorickHe/majicmixRealistic_v6"
MAJICMIX_SUBFOLDER = "v7"  # the reference tutorial loads f"{model_dir}/v7": the repo keeps its diffusers pipeline there
DUNHUANG = "PaperCloud/zju19_dunhuang_style_lora"
DUNHUANG_WEIGHT_NAME = "dunhuang.safetensors"

LORA_RANK = 4
KOHYA_ALPHA = LORA_RANK / 2  # kohya's network_alpha below the rank, so a loader that ignores it is caught
LORA_FILES = ("sd15_peft", "sd15_kohya", "sdxl_peft", "sdxl_kohya")

# Per-component seed bases, apart from tiny_models' (0-499) so no fixture shares weights with another.
_SEEDS = {
    SD15: 1000,
    MAJICMIX: 1100,
    DUNHUANG: 1200,
    "sd15_peft": 1300,
    "sd15_kohya": 1400,
    "sdxl_peft": 1500,
    "sdxl_kohya": 1600,
}
# Spread of the random LoRA factors: the product of two such rank-4 factors is about as large as the tiny
# models' own weights, which changes a 64x64 image by tens of levels rather than a rounding error.
_LORA_STD = 0.25

# stable-diffusion-v1-5's scheduler/scheduler_config.json, verbatim.
_SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
# stable-diffusion-v1-5's feature_extractor/preprocessor_config.json, verbatim (CLIP ViT-L/14 preprocessing).
_SD15_FEATURE_EXTRACTOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}

# The modules diffusers' LoRA training scripts adapt (target_modules of their LoraConfig).
_PEFT_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_PEFT_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# kohya-ss sd-scripts (networks/lora.py) adapt every Linear and 1x1 Conv2d inside these module classes.
_KOHYA_UNET_CLASSES = ("Transformer2DModel",)
_KOHYA_TEXT_CLASSES = ("CLIPAttention", "CLIPMLP")


def build_sd15(cache_dir: Path) -> None:
    """Write stable-diffusion-v1-5 into ``cache_dir`` (huggingface_hub's layout), replacing an earlier build."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    _build_repo(cache_dir, SD15, lambda folder: _write_sd15_pipeline(folder, _SEEDS[SD15], official=True))


def write_majicmix_modelscope(modelscope_cache_dir: Path) -> Path:
    """Write YorickHe/majicmixRealistic_v6 into a ModelScope cache and return its model folder.

    The pipeline sits in the ``v7`` sub-folder, as a civitai conversion has it: fp32 only and no safety checker.
    """
    with tempfile.TemporaryDirectory() as staging:
        _build_repo(Path(staging), MAJICMIX, lambda folder: _write_sd15_pipeline(
            folder / MAJICMIX_SUBFOLDER, _SEEDS[MAJICMIX], official=False))
        return write_modelscope_copy(Path(staging), modelscope_cache_dir, MAJICMIX, MAJICMIX)


def write_dunhuang_modelscope(modelscope_cache_dir: Path) -> Path:
    """Write PaperCloud/zju19_dunhuang_style_lora (one kohya-format SD 1.5 LoRA) into a ModelScope cache and
    return its model folder."""

    def write_files(folder: Path) -> None:
        unet, text_encoder = _sd15_unet(_SEEDS[SD15]), _sd15_text_encoder(_SEEDS[SD15] + 2)
        _write_kohya_lora(folder / DUNHUANG_WEIGHT_NAME, _SEEDS[DUNHUANG], unet, {"lora_te": text_encoder},
                          base_model="sd_v1")

    with tempfile.TemporaryDirectory() as staging:
        _build_repo(Path(staging), DUNHUANG, write_files)
        return write_modelscope_copy(Path(staging), modelscope_cache_dir, DUNHUANG, DUNHUANG)


def write_loras(folder: Path) -> dict[str, Path]:
    """Write the four LoRA files of `LORA_FILES` into ``folder`` and return their paths by file stem.

    ``sd15_*`` fit `SD15` (and the majicmix copy, which has the same architecture), ``sdxl_*`` the tiny SDXL
    base of tiny_models.py; ``*_peft`` are in diffusers' format, ``*_kohya`` in kohya-ss's.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder.mkdir(parents=True, exist_ok=True)
    sd15_unet, sd15_text_encoder = _sd15_unet(_SEEDS[SD15]), _sd15_text_encoder(_SEEDS[SD15] + 2)
    sdxl_unet, sdxl_text_encoder, sdxl_text_encoder_2 = _sdxl_modules()
    paths = {stem: folder / f"{stem}.safetensors" for stem in LORA_FILES}

    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=_peft_lora(sd15_unet, _PEFT_UNET_TARGETS, _SEEDS["sd15_peft"]),
        text_encoder_lora_layers=_peft_lora(sd15_text_encoder, _PEFT_TEXT_TARGETS, _SEEDS["sd15_peft"] + 1),
        weight_name=paths["sd15_peft"].name,
    )
    _write_kohya_lora(paths["sd15_kohya"], _SEEDS["sd15_kohya"], sd15_unet, {"lora_te": sd15_text_encoder},
                      base_model="sd_v1")
    StableDiffusionXLPipeline.save_lora_weights(
        folder,
        unet_lora_layers=_peft_lora(sdxl_unet, _PEFT_UNET_TARGETS, _SEEDS["sdxl_peft"]),
        text_encoder_lora_layers=_peft_lora(sdxl_text_encoder, _PEFT_TEXT_TARGETS, _SEEDS["sdxl_peft"] + 1),
        text_encoder_2_lora_layers=_peft_lora(sdxl_text_encoder_2, _PEFT_TEXT_TARGETS, _SEEDS["sdxl_peft"] + 2),
        weight_name=paths["sdxl_peft"].name,
    )
    _write_kohya_lora(paths["sdxl_kohya"], _SEEDS["sdxl_kohya"], sdxl_unet,
                      {"lora_te1": sdxl_text_encoder, "lora_te2": sdxl_text_encoder_2}, base_model="sdxl_base_v1-0")
    return paths


def _write_sd15_pipeline(folder: Path, seed: int, *, official: bool) -> None:
    """A StableDiffusionPipeline folder.

    ``official``: as stable-diffusion-v1-5 has it, with the safety checker and its feature extractor and the
    ``fp16`` variant beside the fp32 weights.  Otherwise as civitai checkpoints converted to diffusers are:
    fp32 only, ``safety_checker``/``feature_extractor`` null in model_index.json, ``requires_safety_checker``
    false.
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTokenizer

    tokenizer = _clip_tokenizer(pad_token=_EOS)  # SD 1.5's CLIP tokenizer pads with <|endoftext|>
    _write_tokenizer(folder / "tokenizer", tokenizer)
    torch.manual_seed(seed + 1)
    # diffusers' tiny SD test VAE; SD 1.5's latent scaling factor 0.18215 is the default.
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4)
    safety_checker = feature_extractor = None
    if official:
        torch.manual_seed(seed + 3)
        # A CLIP vision tower as small as the text encoder, for the real preprocessing's 224x224 crops.  Its
        # concept embeddings are all ones with thresholds of 1, so no image is ever flagged and blacked out.
        safety_checker = StableDiffusionSafetyChecker(CLIPConfig(
            vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                           "num_hidden_layers": 5, "image_size": 224, "patch_size": 32},
            projection_dim=32,
        ))
        feature_extractor = CLIPImageProcessor(**_SD15_FEATURE_EXTRACTOR)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=_sd15_text_encoder(seed + 2),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=_sd15_unet(seed),
        scheduler=PNDMScheduler.from_config(_SD15_SCHEDULER),
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=official,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    if official:
        # Saved last, as in tiny_models._write_sdxl_pipeline: config.json then records float16 like the real repo.
        pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")
        # The real files: transformers 5 saves the processor as CLIPImageProcessorPil when torchvision is missing.
        (folder / "feature_extractor" / "preprocessor_config.json").write_text(
            json.dumps(_SD15_FEATURE_EXTRACTOR, indent=2))
        index = json.loads((folder / "model_index.json").read_text())
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    # save_pretrained rewrote the tokenizer with current defaults; put back the real repo's four files.
    shutil.rmtree(folder / "tokenizer")
    _write_tokenizer(folder / "tokenizer", tokenizer)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(_SD15_SCHEDULER, indent=2))


def _sd15_unet(seed: int) -> UNet2DConditionModel:
    """diffusers' tiny SD test UNet (StableDiffusionPipelineFastTests.get_dummy_components): 64x64 images."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )


def _sd15_text_encoder(seed: int) -> CLIPTextModel:
    """The tiny CLIP text encoder with SD 1.5's (OpenAI CLIP ViT-L's) quick_gelu activation."""
    import torch
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(_text_config(1, _clip_tokenizer(pad_token=_EOS), hidden_act="quick_gelu"))


def _sdxl_modules() -> tuple[UNet2DConditionModel, torch.nn.Module, torch.nn.Module]:
    """The tiny SDXL base's UNet and text encoders, as tiny_models builds them (only their shapes matter here)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = _unet(1, 0)
    text_encoder = CLIPTextModel(_text_config(1, _clip_tokenizer(pad_token=_EOS), hidden_act="quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(
        1, _clip_tokenizer(pad_token="!"), hidden_act="gelu", hidden_size=_hidden_size_2(1), num_hidden_layers=10))
    return unet, text_encoder, text_encoder_2


def _peft_lora(model: torch.nn.Module, targets: Iterable[str], seed: int) -> dict[str, torch.Tensor]:
    """A PEFT LoRA state dict (``<module>.lora_A.weight``/``lora_B.weight``) for the modules PEFT's
    ``target_modules`` matching picks: those named ``target`` or ending in ``.target``."""
    import torch

    suffixes = tuple(f".{target}" for target in targets)
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for name, module in model.named_modules():
        if not name.endswith(suffixes):
            continue
        down, up = _lora_factors(module, generator)
        state_dict[f"{_published_path(model, name)}.lora_A.weight"] = down
        state_dict[f"{_published_path(model, name)}.lora_B.weight"] = up
    return state_dict


def _write_kohya_lora(path: Path, seed: int, unet: UNet2DConditionModel, text_encoders: dict[str, torch.nn.Module],
                      *, base_model: str) -> None:
    """A kohya-ss LoRA file: ``<prefix>_<module path with "_">.lora_down.weight``/``.lora_up.weight``/``.alpha``
    per adapted module, in fp16 as sd-scripts saves with ``--save_precision fp16``, with its ``ss_*`` metadata.

    sd-scripts name SD 1.x UNet modules by their diffusers paths but SDXL ones by the SGM UNet's (input_blocks,
    middle_block, output_blocks); ``text_encoders`` maps each prefix (lora_te, or lora_te1/lora_te2 for SDXL)
    to its encoder.
    """
    import torch

    sgm = base_model.startswith("sdxl")
    modules = {("lora_unet", _sgm_name(name, unet.config.layers_per_block) if sgm else name): (unet, name)
               for name in _kohya_targets(unet, _KOHYA_UNET_CLASSES)}
    for prefix, text_encoder in text_encoders.items():
        modules.update({(prefix, _published_path(text_encoder, name)): (text_encoder, name)
                        for name in _kohya_targets(text_encoder, _KOHYA_TEXT_CLASSES)})
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for (prefix, kohya_path), (model, name) in modules.items():
        down, up = _lora_factors(model.get_submodule(name), generator)
        lora_name = f"{prefix}_{kohya_path.replace('.', '_')}"
        state_dict[f"{lora_name}.lora_down.weight"] = down.half()
        state_dict[f"{lora_name}.lora_up.weight"] = up.half()
        state_dict[f"{lora_name}.alpha"] = torch.tensor(KOHYA_ALPHA).half()
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(LORA_RANK),
        "ss_network_alpha": str(KOHYA_ALPHA),
        "ss_base_model_version": base_model,
        "ss_output_name": path.stem,
    }
    _save_sorted_metadata(state_dict, path, metadata)


def _save_sorted_metadata(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` with the header's ``__metadata__`` in sorted order.

    safetensors writes ``__metadata__`` from a Rust hash map, whose order changes from call to call, so two
    builds would differ in their header bytes; sorting the keys keeps the header's length and every offset.
    """
    from safetensors.torch import save

    data = save(state_dict, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    sorted_header = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    if len(sorted_header) != length:
        raise RuntimeError("safetensors wrote its header in a form this re-sorting does not reproduce")
    path.write_bytes(data[:8] + sorted_header + data[8 + length:])


def _kohya_targets(model: torch.nn.Module, classes: tuple[str, ...]) -> list[str]:
    """Every Linear or 1x1 Conv2d inside a module of one of ``classes``, as sd-scripts' LoRANetwork picks them."""
    import torch

    names = []
    for parent_name, parent in model.named_modules():
        if type(parent).__name__ not in classes:
            continue
        for child_name, child in parent.named_modules():
            is_1x1_conv = isinstance(child, torch.nn.Conv2d) and child.kernel_size == (1, 1)
            if isinstance(child, torch.nn.Linear) or is_1x1_conv:
                names.append(f"{parent_name}.{child_name}")
    return names


def _sgm_name(name: str, layers_per_block: int) -> str:
    """The SGM UNet path of a diffusers Transformer2DModel's sub-module.

    The SGM UNet numbers its blocks flat: ``input_blocks`` 0 is conv_in, then each level has
    ``layers_per_block`` blocks [resnet, transformer] and, except the last level, a downsampler;
    ``output_blocks`` have ``layers_per_block + 1`` blocks per level; ``middle_block`` is [resnet,
    transformer, resnet].  This is the inverse of diffusers' ``_maybe_map_sgm_blocks_to_diffusers``.
    """
    per_level = layers_per_block + 1
    match = re.fullmatch(r"(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.(.+)", name)
    if match:
        kind, level, layer, rest = match[1], int(match[2]), int(match[3]), match[4]
        if kind == "down_blocks":
            return f"input_blocks.{1 + level * per_level + layer}.1.{rest}"
        return f"output_blocks.{level * per_level + layer}.1.{rest}"
    match = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name)
    if match:
        return f"middle_block.1.{match[1]}"
    raise ValueError(f"no SGM name for UNet module {name}")


def _published_path(model: torch.nn.Module, name: str) -> str:
    """A module's path as LoRA files name it: transformers 5 dropped CLIPTextModel's ``text_model`` wrapper, but
    the files people have were written with transformers 4 (``text_model.encoder.layers.0...``); diffusers
    strips that prefix again when the encoder has no ``text_model``."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel) and not hasattr(model, "text_model"):
        return f"text_model.{name}"
    return name


def _lora_factors(module: torch.nn.Module, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (down, up) factors of rank `LORA_RANK` for a Linear or 1x1 Conv2d, drawn from ``generator``.

    Both are random: PEFT starts ``lora_B`` at zero, which would make a LoRA that changes nothing.
    """
    import torch

    if isinstance(module, torch.nn.Conv2d):
        down_shape, up_shape = (LORA_RANK, module.in_channels, 1, 1), (module.out_channels, LORA_RANK, 1, 1)
    else:
        down_shape, up_shape = (LORA_RANK, module.in_features), (module.out_features, LORA_RANK)
    down = torch.randn(down_shape, generator=generator) * _LORA_STD
    up = torch.randn(up_shape, generator=generator) * _LORA_STD
    return down, up
