"""``--model file.safetensors``: an SDXL checkpoint in the layout civitai serves, written from the tiny SDXL base.

The file holds exactly the weights of the tiny diffusers folder, so reading it must give back every tensor and
imagegen must draw the same pixels from it as from the folder.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_models
from single_file_checkpoint import write_sdxl_single_file

from imagegen.errors import ImagegenError
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("sdxl_models")

REQUEST = GenerationRequest(prompt="a cat and a dog in the rain", recipe="sdxl", seed=5, num_inference_steps=2,
                            width=64, height=64)

@pytest.fixture(scope="module")
def sdxl_folder(sdxl_models: Path) -> Path:
    return tiny_models.snapshot_path(sdxl_models, tiny_models.SDXL_BASE)


@pytest.fixture(scope="module")
def sdxl_file(sdxl_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sdxl_single_file(sdxl_folder, tmp_path_factory.mktemp("single_file") / "tiny_sdxl.safetensors")


@pytest.fixture(scope="module")
def pipelines(sdxl_folder: Path, sdxl_file: Path) -> tuple[Any, Any]:
    """The pipeline read from the single file (with the folder's configs, offline) and the one read from the folder."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from_file = StableDiffusionXLPipeline.from_single_file(str(sdxl_file), config=str(sdxl_folder),
                                                           torch_dtype=torch.float32)
    from_folder = StableDiffusionXLPipeline.from_pretrained(sdxl_folder, dtype=torch.float32)
    return from_file, from_folder


@pytest.mark.parametrize(
    "component",
    [
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
    ],
)
def test_every_tensor_round_trips(pipelines: tuple[Any, Any], component: str) -> None:
    import torch

    from_file, from_folder = (getattr(pipe, component).state_dict() for pipe in pipelines)
    assert from_file.keys() == from_folder.keys()
    differing = [key for key, tensor in from_folder.items()
                 if from_file[key].is_meta or not torch.equal(from_file[key], tensor)]
    assert differing == []


def test_diffusers_recognises_the_file_as_sdxl_base(sdxl_file: Path) -> None:
    """Without ``config=`` diffusers picks the configs by this guess; imagegen always passes the recipe's folder."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors.torch import load_file

    assert infer_diffusers_model_type(load_file(sdxl_file)) == "xl_base"


def test_single_file_draws_the_folders_pixels(engine, sdxl_file: Path) -> None:  # noqa: ANN001 - imagegen.Engine
    from_file = engine.generate(replace(REQUEST, model=str(sdxl_file)))
    from_folder = engine.generate(REQUEST)
    assert len(from_file) == len(from_folder) == 1
    np.testing.assert_array_equal(np.asarray(from_file[0].image), np.asarray(from_folder[0].image))


def _one_random_tensor(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.randn(4, 4)}, path)


def _not_safetensors(path: Path) -> None:
    path.write_bytes(b"<html>a download page saved under the model's name</html>")


@pytest.mark.parametrize(
    "write",
    [
        _one_random_tensor,
        _not_safetensors,
    ],
)
def test_a_file_that_is_no_checkpoint_is_a_clear_error(engine, tmp_path: Path, write) -> None:  # noqa: ANN001
    """The user learns which file is wrong, as an imagegen error the CLI and APIs map to a status."""
    path = tmp_path / "not_a_model.safetensors"
    write(path)
    with pytest.raises(ImagegenError) as error:
        engine.generate(replace(REQUEST, model=str(path)))
    assert str(path) in str(error.value)
