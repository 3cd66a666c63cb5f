"""--fast int8 / fp8: torchao's weight-only quantisation of the denoiser, exactly as torchao's own `quantize_` does it
to a diffusers pipeline; the default pipeline's models stay unquantised."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from tiny_sd15 import SD15

from imagegen.errors import Notice
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("sd15_models")
REQUEST = GenerationRequest(prompt="a lighthouse", recipe="sd15", seed=3, width=64, height=64, num_inference_steps=3)


def int8_reference() -> np.ndarray:
    """torchao's README way: quantize_(model, Int8WeightOnlyConfig()) on the loaded pipeline's UNet."""
    import torch
    from diffusers import AutoPipelineForText2Image
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    pipe = AutoPipelineForText2Image.from_pretrained(SD15, torch_dtype=torch.float32)
    pipe.safety_checker = None
    quantize_(pipe.unet, Int8WeightOnlyConfig())
    return np.asarray(pipe(prompt="a lighthouse", num_inference_steps=3, width=64, height=64,
                           generator=torch.Generator("cpu").manual_seed(3)).images[0])


def test_int8_matches_torchao_on_the_pipeline_and_leaves_the_default_alone(engine) -> None:
    [default] = engine.generate(REQUEST)
    [int8] = engine.generate(replace(REQUEST, fast="int8"))
    [default_after] = engine.generate(REQUEST)
    np.testing.assert_array_equal(np.asarray(int8.image), int8_reference())
    np.testing.assert_array_equal(np.asarray(default_after.image), np.asarray(default.image))
    assert "Fast: int8" in int8.infotext
    pipelines = [pipe for pipe, _ in engine._pipelines.values() if pipe.unet is not None]
    assert len({id(pipe.unet) for pipe in pipelines}) == len(pipelines)  # the quantised UNet is its own


def test_fp8_off_a_recent_gpu_is_a_notice(engine) -> None:
    with pytest.warns(Notice, match="--fast fp8: needs a CUDA GPU of compute capability 8.9\\+ .*, not cpu; ignored"):
        [image] = engine.generate(replace(REQUEST, fast="fp8"))
    assert "Fast:" not in image.infotext


def test_without_torchao_quantisation_is_a_notice(engine, monkeypatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "torchao"
                        else find_spec(name, *args))
    with pytest.warns(Notice, match=r"--fast int8: needs torchao: pip install 'imagegen\[quantize\]'; ignored"):
        [image] = engine.generate(replace(REQUEST, fast="int8"))
    assert "Fast:" not in image.infotext
