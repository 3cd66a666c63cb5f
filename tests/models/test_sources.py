"""Where models come from: the Hugging Face cache, ModelScope's cache, a local path; safetensors only."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tiny_models import SDXL_TURBO, snapshot_path, write_modelscope_copy

from imagegen.engine import Engine, EngineOptions
from imagegen.errors import ModelNotFound, UnsafeWeights
from imagegen.models.sources import LocalModel, ModelRef, locate, parse_model_argument
from imagegen.request import GenerationRequest

TURBO = {"prompt": "a lighthouse", "recipe": "sdxl-turbo", "seed": 3, "width": 64, "height": 64}


def turbo_pixels(engine: Engine, **options) -> np.ndarray:
    return np.asarray(engine.generate(GenerationRequest(**{**TURBO, **options}))[0].image)


@pytest.fixture(scope="module")
def reference_pixels(engine, sdxl_models) -> np.ndarray:
    return turbo_pixels(engine)


def test_missing_model_names_it_where_we_looked_and_how_to_get_it(offline_hf_cache, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFound) as error:
        locate(ModelRef("stabilityai/sdxl-turbo", "AI-ModelScope/sdxl-turbo"))
    message = str(error.value)
    assert "model stabilityai/sdxl-turbo is not available" in message
    assert f"Hugging Face cache {tmp_path}" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "hf download stabilityai/sdxl-turbo" in message
    assert "modelscope download --model AI-ModelScope/sdxl-turbo" in message


def test_modelscope_cache_is_used_when_hugging_face_has_nothing(sdxl_models, tmp_path, monkeypatch,
                                                                reference_pixels) -> None:
    modelscope = tmp_path / "modelscope"
    write_modelscope_copy(sdxl_models, modelscope, SDXL_TURBO, "AI-ModelScope/sdxl-turbo")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(modelscope))
    found = locate(ModelRef("stabilityai/sdxl-turbo", "AI-ModelScope/sdxl-turbo"))
    assert found.is_relative_to(modelscope)
    np.testing.assert_array_equal(turbo_pixels(Engine(EngineOptions(device="cpu"))), reference_pixels)


def test_a_local_folder_replaces_the_recipe_model(sdxl_models, tmp_path, reference_pixels) -> None:
    local = tmp_path / "my-turbo"
    shutil.copytree(snapshot_path(sdxl_models, SDXL_TURBO), local)
    pixels = turbo_pixels(Engine(EngineOptions(device="cpu")), model=str(local))
    np.testing.assert_array_equal(pixels, reference_pixels)


def test_fp16_only_files_load_and_upcast_on_cpu(sdxl_models, tmp_path) -> None:
    local = tmp_path / "fp16-only"
    shutil.copytree(snapshot_path(sdxl_models, SDXL_TURBO), local)
    for weights in local.glob("*/*.safetensors"):
        if ".fp16." not in weights.name:
            weights.unlink()
    engine = Engine(EngineOptions(device="cpu"))
    image = engine.generate(GenerationRequest(**{**TURBO, "model": str(local)}))[0]
    assert image.image.size == (64, 64)
    unet = next(iter(engine._pipelines.values()))[0].unet
    assert str(unet.dtype) == "torch.float32"


@pytest.mark.parametrize("name", ["model.ckpt", "model.bin", "model.pt"])
def test_pickle_checkpoints_are_refused(tmp_path, name) -> None:
    (tmp_path / name).write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeWeights, match="pickle checkpoint.*--allow-pickle"):
        parse_model_argument(str(tmp_path / name))
    assert isinstance(parse_model_argument(str(tmp_path / name), allow_pickle=True), LocalModel)


def test_a_folder_with_pickle_weights_needs_allow_pickle(sdxl_models, tmp_path) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    local = tmp_path / "pickled"
    shutil.copytree(snapshot_path(sdxl_models, SDXL_TURBO), local)
    unet = UNet2DConditionModel.from_pretrained(local / "unet")
    for weights in (local / "unet").glob("*.safetensors"):
        weights.unlink()
    torch.save(unet.state_dict(), local / "unet" / "diffusion_pytorch_model.bin")
    request = GenerationRequest(**{**TURBO, "model": str(local)})
    with pytest.raises(UnsafeWeights, match="pickle weights only"):
        Engine(EngineOptions(device="cpu")).generate(request)
    assert len(Engine(EngineOptions(device="cpu", allow_pickle=True)).generate(request)) == 1


@pytest.mark.parametrize("value", ["./nowhere", "/no/such/model.safetensors", "not-a-hub-id", "a//b", "a/",
                                   "org/repo/../../../etc"])
def test_model_arguments_that_are_neither_paths_nor_hub_ids(value) -> None:
    with pytest.raises(ModelNotFound, match="no such file or folder"):
        parse_model_argument(value)


def test_a_hub_id_is_a_model_reference_on_either_hub() -> None:
    assert parse_model_argument("someone/my-sdxl") == ModelRef("someone/my-sdxl", "someone/my-sdxl")


def test_a_hub_id_may_name_the_subfolder_that_holds_the_model() -> None:
    """The reference tutorial loads f"{snapshot_download('YorickHe/majicmixRealistic_v6')}/v7"."""
    ref = parse_model_argument("YorickHe/majicmixRealistic_v6/v7")
    assert (ref.hf_id, ref.modelscope_id, ref.subfolder) == ("YorickHe/majicmixRealistic_v6",) * 2 + ("v7",)
    assert ref.name == "YorickHe/majicmixRealistic_v6/v7"


def test_half_precision_uses_the_fp16_files_and_falls_back_per_component(sdxl_models, tmp_path) -> None:
    local = tmp_path / "no-fp16-unet"
    shutil.copytree(snapshot_path(sdxl_models, SDXL_TURBO), local)
    (local / "unet" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    engine = Engine(EngineOptions(device="cpu", dtype="float16"))
    assert len(engine.generate(GenerationRequest(**{**TURBO, "model": str(local)}))) == 1
    pipe = next(iter(engine._pipelines.values()))[0]
    assert str(pipe.unet.dtype) == str(pipe.text_encoder.dtype) == "torch.float16"


def test_hub_download_asks_for_one_precision_and_fills_gaps(sdxl_models, tmp_path, monkeypatch) -> None:
    """With the network allowed, only configs and the wanted variant's weights are fetched; a component
    without fp16 files gets its default files. The hub is replaced by a copy of the tiny repo."""
    import fnmatch

    import huggingface_hub

    from imagegen.models import sources

    source = tmp_path / "published"
    shutil.copytree(snapshot_path(sdxl_models, SDXL_TURBO), source)
    (source / "unet" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    (source / "sd_xl_turbo_1.0.safetensors").write_bytes(b"a 7 GB single-file checkpoint we never fetch")
    downloaded = tmp_path / "downloaded"
    asked: list[list[str]] = []

    def fake_snapshot_download(repo_id: str, *, allow_patterns: list[str], ignore_patterns: list[str] | None = None,
                               **_: object) -> str:
        asked.append(allow_patterns)
        for file in source.rglob("*"):
            name = file.relative_to(source).as_posix()
            if file.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns) \
                    and not any(fnmatch.fnmatch(name, p) for p in ignore_patterns or []):
                (downloaded / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, downloaded / name)
        return str(downloaded)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setitem(sources._LISTINGS, "hf", lambda ref: {
        p.relative_to(source).as_posix(): p.stat().st_size for p in source.rglob("*") if p.is_file()})
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    assert locate(ModelRef(SDXL_TURBO), variant="fp16") == downloaded
    weights = sorted(p.relative_to(downloaded).as_posix() for p in downloaded.rglob("*.safetensors"))
    assert weights == ["text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
                       "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"]
    assert asked[0] == ["model_index.json"] and not any("sd_xl_turbo_1.0.safetensors" in files for files in asked)
    shutil.rmtree(downloaded)
    assert locate(ModelRef(SDXL_TURBO), variant=None) == downloaded  # full precision: no fp16 copies fetched
    assert not list(downloaded.rglob("*.fp16.*"))
    assert (downloaded / "vae" / "diffusion_pytorch_model.safetensors").is_file()


def test_a_lightning_file_for_another_unet_is_a_clear_error(sdxl_models, tmp_path, monkeypatch) -> None:
    import torch
    from safetensors.torch import save_file
    from tiny_models import SDXL_LIGHTNING

    cache = tmp_path / "cache"
    shutil.copytree(sdxl_models, cache, symlinks=True)
    save_file({"conv_in.weight": torch.zeros(1)},
              snapshot_path(cache, SDXL_LIGHTNING) / "sdxl_lightning_4step_unet.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(ModelNotFound, match="sdxl_lightning_4step_unet.safetensors does not hold weights for the UNet"):
        Engine(EngineOptions(device="cpu")).generate(GenerationRequest(**{**TURBO, "recipe": "sdxl-lightning"}))


def test_a_partial_download_and_an_odd_model_index_are_clear_errors(sdxl_models, tmp_path) -> None:
    import json

    partial = tmp_path / "partial"
    shutil.copytree(snapshot_path(sdxl_models, SDXL_TURBO), partial)
    for weights in (partial / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelNotFound, match="unet has no weights"):
        Engine(EngineOptions(device="cpu")).generate(GenerationRequest(**{**TURBO, "model": str(partial)}))
    odd = tmp_path / "odd"
    shutil.copytree(snapshot_path(sdxl_models, SDXL_TURBO), odd)
    index = json.loads((odd / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet9000Model"]
    (odd / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelNotFound, match="names diffusers.UNet9000Model, which this installation does not have"):
        Engine(EngineOptions(device="cpu")).generate(GenerationRequest(**{**TURBO, "model": str(odd)}))
