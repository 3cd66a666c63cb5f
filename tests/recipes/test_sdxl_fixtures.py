"""The tiny SDXL-family and DiT repos resolve like the real ones, and the reference tutorial's recipes run on them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import reference_tutorial
from PIL.Image import Image
from tiny_models import (
    LCM_SDXL,
    LIGHTNING_STEPS,
    SDXL_BASE,
    SDXL_LIGHTNING,
    SDXL_TURBO,
    build_hf_cache,
    snapshot_path,
    write_modelscope_copy,
)

PROMPT = "a photo of the cat and dog"
PIPELINE_WEIGHTS = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
    "text_encoder_2": "model",
}


def test_huggingface_hub_finds_the_repos_offline(sdxl_models: Path) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    base = snapshot_download(
        SDXL_BASE,
        allow_patterns=["model_index.json", "unet/*"],
        local_files_only=True,
        cache_dir=sdxl_models,
    )
    assert Path(base) == snapshot_path(sdxl_models, SDXL_BASE)
    assert snapshot_download(SDXL_TURBO) == str(snapshot_path(sdxl_models, SDXL_TURBO))  # cache from the constants
    lightning = hf_hub_download(
        SDXL_LIGHTNING, "sdxl_lightning_4step_unet.safetensors", local_files_only=True, cache_dir=sdxl_models
    )
    assert Path(lightning) == snapshot_path(sdxl_models, SDXL_LIGHTNING) / "sdxl_lightning_4step_unet.safetensors"
    assert Path(hf_hub_download(LCM_SDXL, "config.json")).parent == snapshot_path(sdxl_models, LCM_SDXL)
    with pytest.raises(LocalEntryNotFoundError):  # the real repo's single-file checkpoint is not built
        hf_hub_download(SDXL_BASE, "sd_xl_base_1.0.safetensors", local_files_only=True, cache_dir=sdxl_models)


def test_builds_are_identical(sdxl_models: Path, tmp_path: Path) -> None:
    """The commit hash covers every file's content, so equal hashes mean byte-identical repos."""
    build_hf_cache(tmp_path)
    for repo_id in (SDXL_BASE, SDXL_TURBO, LCM_SDXL, SDXL_LIGHTNING):
        assert snapshot_path(tmp_path, repo_id).name == snapshot_path(sdxl_models, repo_id).name


def test_fp16_variants_sit_beside_the_full_weights(sdxl_models: Path) -> None:
    from safetensors import safe_open

    weights_files = [
        (snapshot_path(sdxl_models, repo) / folder, stem)
        for repo in (SDXL_BASE, SDXL_TURBO)
        for folder, stem in PIPELINE_WEIGHTS.items()
    ]
    weights_files.append((snapshot_path(sdxl_models, LCM_SDXL), "diffusion_pytorch_model"))  # at the repo root
    for folder, stem in weights_files:
        assert (folder / f"{stem}.safetensors").is_file()
        with safe_open(folder / f"{stem}.fp16.safetensors", framework="pt") as weights:
            assert {str(weights.get_tensor(key).dtype) for key in weights.keys()} == {"torch.float16"}


def test_schedulers_match_the_real_repos(sdxl_models: Path) -> None:
    base = json.loads((snapshot_path(sdxl_models, SDXL_BASE) / "scheduler" / "scheduler_config.json").read_text())
    turbo = json.loads((snapshot_path(sdxl_models, SDXL_TURBO) / "scheduler" / "scheduler_config.json").read_text())
    assert base["_class_name"] == "EulerDiscreteScheduler"
    assert (base["beta_schedule"], base["timestep_spacing"], base["steps_offset"]) == ("scaled_linear", "leading", 1)
    assert (turbo["_class_name"], turbo["timestep_spacing"]) == ("EulerAncestralDiscreteScheduler", "trailing")


def test_lightning_checkpoints_load_into_the_base_unet(sdxl_models: Path) -> None:
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SDXL_BASE, subfolder="unet"))
    expected = {key: tensor.shape for key, tensor in unet.state_dict().items()}
    first_weights = []
    lightning = snapshot_path(sdxl_models, SDXL_LIGHTNING)
    for steps in LIGHTNING_STEPS:
        state_dict = load_file(lightning / f"sdxl_lightning_{steps}step_unet.safetensors")
        assert {key: tensor.shape for key, tensor in state_dict.items()} == expected
        assert {str(tensor.dtype) for tensor in state_dict.values()} == {"torch.float16"}
        first_weights.append(state_dict["conv_in.weight"])
    assert all(not a.equal(b) for a, b in zip(first_weights, first_weights[1:]))


@pytest.mark.parametrize(
    ("folder", "pad_token", "pad_id_is_eos"), [("tokenizer", "<|endoftext|>", True), ("tokenizer_2", "!", False)]
)
def test_tokenizers_pad_to_77_ids_the_text_encoders_know(
    sdxl_models: Path, folder: str, pad_token: str, pad_id_is_eos: bool
) -> None:
    from transformers import CLIPTextConfig, CLIPTokenizer

    snapshot = snapshot_path(sdxl_models, SDXL_BASE)
    assert not (snapshot / folder / "tokenizer.json").exists()  # like the real repo: vocab.json + merges.txt
    tokenizer = CLIPTokenizer.from_pretrained(snapshot / folder)
    ids = tokenizer(PROMPT, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    assert len(ids) == 77
    assert tokenizer.pad_token == pad_token
    assert (tokenizer.pad_token_id == tokenizer.eos_token_id) is pad_id_is_eos
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id in ids and ids[-1] == tokenizer.pad_token_id
    config = CLIPTextConfig.from_pretrained(snapshot / folder.replace("tokenizer", "text_encoder"))
    assert config.vocab_size == len(tokenizer)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )


RECIPES: dict[str, tuple[Callable[..., list[Image]], dict[str, object]]] = {
    # 2 steps instead of the recipe's 30 keep the suite fast; the code path is the same.
    "sdxl": (reference_tutorial.sdxl, {"steps": 2, "negative_prompt": "blurry"}),
    "sdxl_turbo": (reference_tutorial.sdxl_turbo, {}),
    "lcm_sdxl": (reference_tutorial.lcm_sdxl, {}),
    "sdxl_lightning": (reference_tutorial.sdxl_lightning, {}),
    "sdxl_lightning_1step": (reference_tutorial.sdxl_lightning, {"steps": 1}),
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_reference_recipe_is_seeded_and_sized(sdxl_models: Path, recipe: str) -> None:
    generate, options = RECIPES[recipe]
    first = generate(PROMPT, seed=7, width=64, height=32, **options)
    again = generate(PROMPT, seed=7, width=64, height=32, **options)
    other = generate(PROMPT, seed=8, width=64, height=32, **options)
    assert [image.size for image in first] == [(64, 32)]
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(other[0]))


def test_reference_batch_gives_one_image_per_seed(sdxl_models: Path) -> None:
    images = reference_tutorial.sdxl_turbo(PROMPT, seed=7, num_images=2)
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_lightning_rejects_step_counts_without_a_checkpoint(sdxl_models: Path) -> None:
    with pytest.raises(ValueError, match="not 3"):
        reference_tutorial.sdxl_lightning(PROMPT, seed=0, steps=3)


def test_modelscope_copy_uses_modelscope_layout(sdxl_models: Path, tmp_path: Path) -> None:
    folder = write_modelscope_copy(sdxl_models, tmp_path, SDXL_BASE, "AI-ModelScope/stable-diffusion-xl-base-1.0")
    assert folder == tmp_path / "models" / "AI-ModelScope" / "stable-diffusion-xl-base-1___0"
    snapshot = snapshot_path(sdxl_models, SDXL_BASE)
    copied = {path.relative_to(folder) for path in folder.rglob("*") if path.is_file()}
    original = {path.relative_to(snapshot) for path in snapshot.rglob("*") if path.is_file()}
    assert copied == original | {Path(".mdl"), Path(".msc"), Path(".mv")}
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        snapshot / "unet" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()
