"""LoRAs: both file formats, for SD 1.5 and SDXL, stacked, weighted, cached, and gone after their request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_models import SDXL_TURBO
from tiny_sd15 import SD15, write_loras

from imagegen.engine import Engine, EngineOptions
from imagegen.errors import ModelNotFound, UnsafeWeights
from imagegen.models.loras import short_hash
from imagegen.outputs.metadata import parse_infotext
from imagegen.parameters import request_from_infotext
from imagegen.prompts.lora_tags import LoraSpec
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("sdxl_models", "sd15_models")

PROMPT = "a photo of the cat and dog"
RECIPE_OF = {"sd15": ("sd15", SD15), "sdxl": ("sdxl-turbo", SDXL_TURBO)}


@pytest.fixture(scope="session")
def lora_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    write_loras(folder)
    return folder


@pytest.fixture(autouse=True)
def _lora_dir(lora_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_LORA_DIR", str(lora_folder))


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def generate(engine, family: str, prompt: str = PROMPT, **options):
    recipe = RECIPE_OF[family][0]
    steps = {"num_inference_steps": 2} if recipe == "sd15" else {}
    return engine.generate(GenerationRequest(prompt=prompt, recipe=recipe, seed=21, width=64, height=64,
                                             **steps, **options))


def diffusers_with_loras(family: str, files: list[Path], weights: list[float]):
    """Plain diffusers: load_lora_weights for each file as its own adapter, set_adapters with the weights."""
    import torch
    from diffusers import AutoPipelineForText2Image

    recipe, repo = RECIPE_OF[family]
    extra = {"safety_checker": None} if family == "sd15" else {}
    pipe = AutoPipelineForText2Image.from_pretrained(repo, torch_dtype=torch.float32, **extra)
    names = [f"a{i}" for i in range(len(files))]
    for name, path in zip(names, files):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
    pipe.set_adapters(names, adapter_weights=weights)
    steps, guidance = (2, 7.5) if family == "sd15" else (1, 0.0)
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, width=64, height=64,
                generator=torch.Generator("cpu").manual_seed(21)).images[0]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("kind", ["peft", "kohya"])
def test_each_format_matches_diffusers(engine, lora_folder, family, kind) -> None:
    ours = generate(engine, family, loras=(LoraSpec(f"{family}_{kind}", 0.9),))
    theirs = diffusers_with_loras(family, [lora_folder / f"{family}_{kind}.safetensors"], [0.9])
    np.testing.assert_array_equal(pixels(ours[0].image), pixels(theirs))
    # The LoRA acted: far beyond the 1 level of rounding noise (a 1-step Turbo image moves least).
    assert np.abs(pixels(ours[0].image) - pixels(generate(engine, family)[0].image)).mean() > 3


def test_stacked_loras_and_prompt_tags_match_diffusers(engine, lora_folder) -> None:
    tagged = generate(engine, "sd15", f"{PROMPT} <lora:sd15_kohya:0.4>", loras=(LoraSpec("sd15_peft", 0.8),))
    theirs = diffusers_with_loras("sd15", [lora_folder / "sd15_peft.safetensors",
                                           lora_folder / "sd15_kohya.safetensors"], [0.8, 0.4])
    np.testing.assert_array_equal(pixels(tagged[0].image), pixels(theirs))


def test_a_request_after_a_lora_request_is_as_on_a_fresh_engine() -> None:
    engine = Engine(EngineOptions(device="cpu"))
    before = generate(engine, "sdxl")
    generate(engine, "sdxl", loras=(LoraSpec("sdxl_kohya"), LoraSpec("sdxl_peft", -0.5)))
    after = generate(engine, "sdxl")
    np.testing.assert_array_equal(pixels(after[0].image), pixels(before[0].image))


def test_a_lora_is_read_from_disk_once(engine) -> None:
    generate(engine, "sd15", loras=(LoraSpec("sd15_peft"),))
    reads = engine.loras.reads
    again = generate(engine, "sd15", loras=(LoraSpec("sd15_peft", 0.3),))
    assert engine.loras.reads == reads
    assert "sd15_peft" in again[0].infotext


def test_infotext_records_tags_and_hashes_and_replays(engine, lora_folder) -> None:
    image = generate(engine, "sd15", f"{PROMPT} <lora:sd15_kohya:0.4>", loras=(LoraSpec("sd15_peft", 0.8),))[0]
    info = parse_infotext(image.infotext)
    assert info.prompt == f"{PROMPT} <lora:sd15_peft:0.8> <lora:sd15_kohya:0.4>"
    assert info.params["Lora hashes"] == (f"sd15_peft: {short_hash(lora_folder / 'sd15_peft.safetensors')}, "
                                          f"sd15_kohya: {short_hash(lora_folder / 'sd15_kohya.safetensors')}")
    replayed = engine.generate(request_from_infotext(image.infotext))[0]
    np.testing.assert_array_equal(pixels(replayed.image), pixels(image.image))


def test_the_hash_is_a1111s_and_ignores_metadata(lora_folder, tmp_path) -> None:
    """A1111 hashes a safetensors file's tensor bytes only (sd-scripts' "addnet" hash)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    path = lora_folder / "sd15_peft.safetensors"
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert short_hash(path) == hashlib.sha256(data[8 + header:]).hexdigest()[:12]
    save_file(load_file(path), tmp_path / "renamed.safetensors", metadata={"ss_note": "edited"})
    assert short_hash(tmp_path / "renamed.safetensors") == short_hash(path)


def test_lora_errors_name_the_lora_and_load_nothing(engine, lora_folder, tmp_path) -> None:
    with pytest.raises(ModelNotFound, match="LoRA 'nothing-here' not found.*IMAGEGEN_LORA_DIR"):
        generate(engine, "sd15", loras=(LoraSpec("nothing-here"),))
    (tmp_path / "old.ckpt").write_bytes(b"pickle")
    with pytest.raises(UnsafeWeights, match="pickle"):
        generate(engine, "sd15", loras=(LoraSpec(str(tmp_path / "old.ckpt")),))
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelNotFound, match="cannot be read"):
        generate(engine, "sd15", loras=(LoraSpec(str(tmp_path / "broken.safetensors")),))
    with pytest.raises(ModelNotFound, match="does not fit"):
        generate(engine, "sd15", loras=(LoraSpec("sdxl_kohya"),))
    import torch
    from safetensors.torch import save_file

    save_file({"unet.no_such_block.to_q.lora_A.weight": torch.ones(4, 8),
               "unet.no_such_block.to_q.lora_B.weight": torch.ones(8, 4)}, tmp_path / "foreign.safetensors")
    with pytest.raises(ModelNotFound, match="foreign.safetensors.*does not fit this model"):
        generate(engine, "sd15", loras=(LoraSpec(str(tmp_path / "foreign.safetensors")),))
    np.testing.assert_array_equal(pixels(generate(engine, "sd15")[0].image),
                                  pixels(generate(Engine(EngineOptions(device="cpu")), "sd15")[0].image))


def test_a_lora_that_makes_nan_fails_instead_of_saving_black_images(engine, lora_folder, tmp_path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from imagegen.errors import InvalidOutput

    tensors = load_file(lora_folder / "sd15_peft.safetensors")
    save_file({key: torch.full_like(tensor, float("nan")) for key, tensor in tensors.items()},
              tmp_path / "nan.safetensors")
    with pytest.raises(InvalidOutput, match="NaN or infinite values"):
        generate(engine, "sd15", loras=(LoraSpec(str(tmp_path / "nan.safetensors")),))
    assert np.abs(pixels(generate(engine, "sd15")[0].image)).max() > 0  # the engine goes on, unharmed
