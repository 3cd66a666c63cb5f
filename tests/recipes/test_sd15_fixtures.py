"""The tiny SD 1.5 fixtures resolve like the real repos, the reference tutorial's SD 1.5 recipes run on them, and
every LoRA file loads into plain diffusers with each of its keys on a module."""

from __future__ import annotations

import json
import logging
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import reference_tutorial_sd15
from tiny_models import SDXL_BASE, snapshot_path
from tiny_sd15 import (
    DUNHUANG,
    DUNHUANG_WEIGHT_NAME,
    KOHYA_ALPHA,
    LORA_FILES,
    LORA_RANK,
    MAJICMIX,
    MAJICMIX_SUBFOLDER,
    SD15,
    build_sd15,
    write_dunhuang_modelscope,
    write_loras,
    write_majicmix_modelscope,
)

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from PIL.Image import Image

PROMPT = "a photo of the cat and dog"
# The loggers that report LoRA keys without a module: diffusers' own (unexpected keys, a component with no
# keys), transformers' PEFT integration (its load report for text encoders) and PEFT's.
_LORA_LOGGERS = ("diffusers", "transformers", "peft")


@dataclass(frozen=True)
class Fixtures:
    """Where the module's builds went: the two caches, the ModelScope model folders and the LoRA files."""

    hf_cache: Path
    modelscope_cache: Path
    majicmix: Path
    dunhuang: Path
    loras: dict[str, Path]


@pytest.fixture(scope="module")
def built(sd15_models: Path, sdxl_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixtures]:
    """conftest's cache (SD 1.5 and the SDXL base), majicmix and the Dunhuang LoRA in a ModelScope cache, the
    four LoRA files in a plain folder."""
    modelscope_cache = tmp_path_factory.mktemp("sd15_modelscope_cache")
    fixtures = Fixtures(
        hf_cache=sd15_models,
        modelscope_cache=modelscope_cache,
        majicmix=write_majicmix_modelscope(modelscope_cache),
        dunhuang=write_dunhuang_modelscope(modelscope_cache),
        loras=write_loras(tmp_path_factory.mktemp("loras")),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELSCOPE_CACHE", str(modelscope_cache))
        yield fixtures


@pytest.fixture(scope="module")
def pipes(built: Fixtures) -> dict[str, DiffusionPipeline]:
    """One float32 pipeline per base model, shared by the LoRA tests (each unloads what it loads)."""
    import torch
    from diffusers import (
        AutoPipelineForText2Image,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    loaded = {
        "sd15": StableDiffusionPipeline.from_pretrained(SD15, safety_checker=None, torch_dtype=torch.float32),
        "majicmix": AutoPipelineForText2Image.from_pretrained(built.majicmix / MAJICMIX_SUBFOLDER,
                                                               torch_dtype=torch.float32),
        "sdxl": StableDiffusionXLPipeline.from_pretrained(SDXL_BASE, torch_dtype=torch.float32),
    }
    for pipe in loaded.values():
        pipe.set_progress_bar_config(disable=True)
    return loaded


@pytest.fixture(scope="module")
def plain_images(pipes: dict[str, DiffusionPipeline]) -> dict[str, Image]:
    """Each pipeline's image without a LoRA (`_generate`: seed 7, 2 steps, 64x64)."""
    return {name: _generate(pipe) for name, pipe in pipes.items()}


def test_sd15_resolves_offline_in_the_real_layout(built: Fixtures) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download
    from safetensors import safe_open

    snapshot = snapshot_path(built.hf_cache, SD15)
    assert snapshot_download(SD15) == str(snapshot)
    index = json.loads((snapshot / "model_index.json").read_text())
    assert index["requires_safety_checker"] is True
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]
    scheduler = json.loads((snapshot / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "PNDMScheduler"
    assert (scheduler["skip_prk_steps"], scheduler["steps_offset"]) == (True, 1)
    for component, stem in [("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                            ("text_encoder", "model"), ("safety_checker", "model")]:
        assert Path(hf_hub_download(SD15, f"{component}/{stem}.safetensors")).is_file()
        with safe_open(hf_hub_download(SD15, f"{component}/{stem}.fp16.safetensors"), framework="pt") as weights:
            assert {str(weights.get_tensor(key).dtype) for key in weights.keys()} == {"torch.float16"}
    assert not (snapshot / "tokenizer" / "tokenizer.json").exists()  # vocab.json + merges.txt, as the real repo


def test_majicmix_is_a_converted_pipeline_in_a_modelscope_subfolder(built: Fixtures) -> None:
    assert built.majicmix == built.modelscope_cache / "models" / "YorickHe" / "majicmixRealistic_v6"
    assert pickle.loads((built.majicmix / ".mdl").read_bytes()) == {"id": MAJICMIX}
    cached = {entry["Path"] for entry in pickle.loads((built.majicmix / ".msc").read_bytes())}
    assert "v7/unet/diffusion_pytorch_model.safetensors" in cached
    index = json.loads((built.majicmix / MAJICMIX_SUBFOLDER / "model_index.json").read_text())
    assert (index["safety_checker"], index["feature_extractor"]) == ([None, None], [None, None])
    assert index["requires_safety_checker"] is False
    assert not list(built.majicmix.rglob("*.fp16.*"))
    assert not (built.majicmix / "model_index.json").exists()  # only the v7 sub-folder holds a pipeline
    assert built.dunhuang == built.modelscope_cache / "models" / "PaperCloud" / "zju19_dunhuang_style_lora"
    assert pickle.loads((built.dunhuang / ".mdl").read_bytes()) == {"id": DUNHUANG}
    assert (built.dunhuang / DUNHUANG_WEIGHT_NAME).is_file()


def test_safety_checker_never_blacks_out(built: Fixtures, plain_images: dict[str, Image]) -> None:
    """The official folder loads with its safety checker, which passes the image the checker-less run gives.

    Also the reference tutorial's form for a pipeline folder without a sub-folder, as for a LoRA on plain SD 1.5.
    """
    with_checker = reference_tutorial_sd15.sd15_lora(snapshot_path(built.hf_cache, SD15), None, None, PROMPT, seed=7,
                                                 steps=2, subfolder="")
    assert np.array_equal(_pixels(with_checker[0]), _pixels(plain_images["sd15"]))


def test_reference_recipes_are_seeded_and_sized(built: Fixtures) -> None:
    from PIL import Image as PILImage

    first, again, other = (reference_tutorial_sd15.sd15(PROMPT, seed=seed, steps=2, width=64, height=32)
                           for seed in (7, 7, 8))
    assert [image.size for image in first] == [(64, 32)]
    assert np.array_equal(_pixels(first[0]), _pixels(again[0]))
    assert not np.array_equal(_pixels(first[0]), _pixels(other[0]))
    first, again = (reference_tutorial_sd15.sd15_lora(built.majicmix, built.dunhuang, DUNHUANG_WEIGHT_NAME, PROMPT,
                                                  seed=7, steps=2, width=64, height=32, num_images=2)
                    for _ in range(2))
    assert [image.size for image in first] == [(64, 32), (64, 32)]
    assert np.array_equal(_pixels(first[1]), _pixels(again[1]))
    assert not np.array_equal(_pixels(first[0]), _pixels(first[1]))
    init_image = PILImage.fromarray(np.linspace(0, 255, 64 * 64 * 3).astype(np.uint8).reshape(64, 64, 3))
    first, again = (reference_tutorial_sd15.sd15_img2img(PROMPT, init_image, seed=7, steps=2, strength=0.5)
                    for _ in range(2))
    assert [image.size for image in first] == [(64, 64)]
    assert np.array_equal(_pixels(first[0]), _pixels(again[0]))


def test_majicmix_and_the_dunhuang_lora_each_change_the_image(built: Fixtures,
                                                              plain_images: dict[str, Image]) -> None:
    dunhuang = reference_tutorial_sd15.sd15_lora(built.majicmix, built.dunhuang, DUNHUANG_WEIGHT_NAME, PROMPT,
                                             seed=7, steps=2)[0]
    assert _mean_difference(plain_images["majicmix"], plain_images["sd15"]) > 5
    assert _mean_difference(dunhuang, plain_images["majicmix"]) > 5


def test_lora_files_use_the_published_key_names(built: Fixtures) -> None:
    """The names a loader meets in the wild: transformers 4's ``text_model`` paths, SGM block names for SDXL's
    kohya UNet, fp16 kohya tensors with an alpha each and sd-scripts' metadata."""
    from safetensors import safe_open

    files = {stem: safe_open(path, framework="pt") for stem, path in built.loras.items()}
    keys = {stem: set(weights.keys()) for stem, weights in files.items()}
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in keys["sd15_peft"]
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight" in keys["sd15_peft"]
    assert "text_encoder_2.text_model.encoder.layers.9.self_attn.out_proj.lora_A.weight" in keys["sdxl_peft"]
    assert {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha",
            "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight",
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_up.weight"} <= keys["sd15_kohya"]
    assert {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
            "lora_te2_text_model_encoder_layers_9_self_attn_v_proj.lora_up.weight",
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
            "lora_unet_input_blocks_5_1_transformer_blocks_1_attn2_to_k.alpha",
            "lora_unet_middle_block_1_transformer_blocks_1_attn1_to_out_0.lora_up.weight",
            "lora_unet_output_blocks_2_1_proj_out.lora_down.weight"} <= keys["sdxl_kohya"]
    assert not any("down_blocks" in key or "up_blocks" in key for key in keys["sdxl_kohya"])
    for stem in ("sd15_kohya", "sdxl_kohya"):
        assert files[stem].metadata()["ss_network_module"] == "networks.lora"
        assert float(files[stem].metadata()["ss_network_alpha"]) == KOHYA_ALPHA
        assert {str(files[stem].get_tensor(key).dtype) for key in keys[stem]} == {"torch.float16"}
    # SD 1.5's transformer projections are 1x1 convolutions, so kohya's factors for them are 4-D.
    proj_in_down = files["sd15_kohya"].get_slice("lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight")
    assert proj_in_down.get_shape() == [LORA_RANK, 64, 1, 1]


# Which pipeline each file is for, and the scale PEFT must give its modules: kohya's alpha / rank, else 1.
LORA_CASES = {
    "sd15_peft": ("sd15", 1.0),
    "sd15_kohya": ("sd15", KOHYA_ALPHA / LORA_RANK),
    "sdxl_peft": ("sdxl", 1.0),
    "sdxl_kohya": ("sdxl", KOHYA_ALPHA / LORA_RANK),
    "dunhuang": ("majicmix", KOHYA_ALPHA / LORA_RANK),
}


@pytest.mark.parametrize("lora", LORA_CASES)
def test_lora_lands_every_key_changes_the_image_and_unloads(
    built: Fixtures, pipes: dict[str, DiffusionPipeline], plain_images: dict[str, Image], lora: str
) -> None:
    from safetensors import safe_open

    pipe_name, scale = LORA_CASES[lora]
    pipe = pipes[pipe_name]
    path = built.dunhuang / DUNHUANG_WEIGHT_NAME if lora == "dunhuang" else built.loras[lora]
    with safe_open(path, framework="pt") as weights:
        down_keys = [key for key in weights.keys() if key.endswith((".lora_down.weight", ".lora_A.weight"))]
    try:
        with _captured_warnings() as messages:
            pipe.load_lora_weights(str(path), adapter_name=lora)
        assert messages == []
        adapted = _adapted_modules(pipe, lora)
        assert len(adapted) == len(down_keys)
        assert {module.scaling[lora] for module in adapted} == {scale}
        assert _mean_difference(_generate(pipe), plain_images[pipe_name]) > 5
    finally:
        pipe.unload_lora_weights()
    assert np.array_equal(_pixels(_generate(pipe)), _pixels(plain_images[pipe_name]))


def test_warning_capture_sees_a_key_without_a_module(built: Fixtures, pipes: dict[str, DiffusionPipeline]) -> None:
    """The check above means something: one extra kohya key for a module the UNet lacks is reported."""
    import torch
    from safetensors.torch import load_file

    state_dict = load_file(built.loras["sd15_kohya"])
    missing = "lora_unet_down_blocks_0_attentions_5_proj_in"  # down block 0 has no attentions
    state_dict.update({f"{missing}.lora_down.weight": torch.zeros(LORA_RANK, 32),
                       f"{missing}.lora_up.weight": torch.zeros(32, LORA_RANK),
                       f"{missing}.alpha": torch.tensor(KOHYA_ALPHA)})
    try:
        with _captured_warnings() as messages:
            pipes["sd15"].load_lora_weights(state_dict, adapter_name="extra_key")
    finally:
        pipes["sd15"].unload_lora_weights()
    assert any("down_blocks.0.attentions.5.proj_in" in message for message in messages)


def test_load_lora_weights_leaves_a_passed_state_dict_alone(built: Fixtures,
                                                           pipes: dict[str, DiffusionPipeline]) -> None:
    from safetensors.torch import load_file

    state_dict = load_file(built.loras["sd15_kohya"])
    try:
        pipes["sd15"].load_lora_weights(state_dict, adapter_name="passed_dict")
    finally:
        pipes["sd15"].unload_lora_weights()
    original = load_file(built.loras["sd15_kohya"])
    assert state_dict.keys() == original.keys()
    assert all(state_dict[key].equal(original[key]) for key in original)


def test_builds_are_byte_identical(built: Fixtures, tmp_path: Path) -> None:
    build_sd15(tmp_path / "hf")
    assert snapshot_path(tmp_path / "hf", SD15).name == snapshot_path(built.hf_cache, SD15).name
    for first, second in [(built.majicmix, write_majicmix_modelscope(tmp_path / "modelscope")),
                          (built.dunhuang, write_dunhuang_modelscope(tmp_path / "modelscope"))]:
        assert _file_bytes(first) == _file_bytes(second)
    loras = write_loras(tmp_path / "loras")
    assert sorted(loras) == sorted(LORA_FILES)
    assert all(loras[stem].read_bytes() == built.loras[stem].read_bytes() for stem in LORA_FILES)


@contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """Every warning logged by diffusers, transformers or PEFT, or raised through ``warnings``, inside the block.

    diffusers and transformers log through their own library loggers, which do not propagate to the root
    logger, so pytest's caplog never sees them: a handler goes on each logger instead.
    """
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(f"{record.name}: {record.getMessage()}")

    handler = Collect(logging.WARNING)
    loggers = [logging.getLogger(name) for name in _LORA_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(min(logger.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(f"{warning.category.__name__}: {warning.message}" for warning in caught)
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


def _adapted_modules(pipe: DiffusionPipeline, adapter: str) -> list[torch.nn.Module]:
    """The modules of the UNet and text encoders that carry a LoRA layer for ``adapter``."""
    components = [getattr(pipe, name, None) for name in ("unet", "text_encoder", "text_encoder_2")]
    return [module for component in components if component is not None for module in component.modules()
            if adapter in getattr(module, "lora_A", {})]


def _generate(pipe: DiffusionPipeline) -> Image:
    import torch

    return pipe(PROMPT, num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(7)).images[0]


def _pixels(image: Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def _mean_difference(first: Image, second: Image) -> float:
    return float(np.abs(_pixels(first) - _pixels(second)).mean())


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
