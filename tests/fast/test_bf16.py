"""--fast bf16: bfloat16 on a CPU that computes it natively, as diffusers runs a pipeline loaded in bfloat16; never
assumed: a CPU without bf16 instructions, a GPU or a given --dtype leave it out with a notice."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from tiny_models import SDXL_TURBO

from imagegen.engine import Engine, EngineOptions
from imagegen.errors import Notice
from imagegen.models import devices
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("sdxl_models")
REQUEST = GenerationRequest(prompt="a lighthouse", recipe="sdxl-turbo", seed=4, width=64, height=64)


def reference_in_bf16() -> np.ndarray:
    """diffusers' own way: the pipeline loaded in bfloat16 (its half-precision files, as on a GPU), on the CPU."""
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(SDXL_TURBO, torch_dtype=torch.bfloat16, variant="fp16")
    return np.asarray(pipe(prompt="a lighthouse", num_inference_steps=1, guidance_scale=0.0, width=64, height=64,
                           generator=torch.Generator("cpu").manual_seed(4)).images[0])


def test_bf16_runs_as_diffusers_in_bfloat16_where_the_cpu_has_it(engine) -> None:
    if not devices.cpu_has_bf16():  # then it is left out: the image is the default one
        with pytest.warns(Notice, match="this CPU has no bf16 instructions"):
            [image] = engine.generate(GenerationRequest(**{**REQUEST.__dict__, "fast": "bf16"}))
        assert "Fast:" not in image.infotext
        return
    [fast] = engine.generate(GenerationRequest(**{**REQUEST.__dict__, "fast": "bf16"}))
    [default] = engine.generate(REQUEST)
    np.testing.assert_array_equal(np.asarray(fast.image), reference_in_bf16())
    assert "Fast: bf16" in fast.infotext
    difference = np.abs(np.asarray(fast.image, dtype=int) - np.asarray(default.image, dtype=int))
    assert 0 < difference.max()  # it is another precision, not the default path


@pytest.mark.parametrize(("options", "capable", "reason"), [
    ({"device": "cpu"}, False, "this CPU has no bf16 instructions (AVX512-BF16 or AMX)"),
    ({"device": "cpu", "dtype": "float32"}, True, "--dtype is given"),
])
def test_bf16_is_left_out_with_the_reason(monkeypatch, options, capable, reason) -> None:
    monkeypatch.setattr("imagegen.engine.cpu_has_bf16", lambda: capable)
    engine = Engine(EngineOptions(**options))
    with pytest.warns(Notice, match=re.escape(f"--fast bf16: {reason}; ignored")):
        kept = engine.usable_fast(GenerationRequest(prompt="x", recipe="sdxl-turbo", fast="tiny-vae,bf16"))
    assert kept.fast == "tiny-vae"


def test_bf16_does_not_apply_to_the_full_precision_recipes() -> None:
    from imagegen.recipes import get_recipe

    with pytest.warns(Notice, match="--fast bf16: does not apply to recipe digits"):
        assert GenerationRequest(prompt="7", fast="bf16").resolve(get_recipe("digits")).fast is None


@pytest.mark.parametrize(("flags", "native"), [
    ({"avx512_bf16": True, "amx_bf16": False}, True), ({"avx512_bf16": False, "amx_bf16": True}, True),
    ({"avx512_bf16": False, "amx_bf16": False, "avx512_f": True}, False),  # plain AVX-512 only emulates bf16
])
def test_native_bf16_is_read_from_the_cpus_instruction_sets(monkeypatch, flags, native) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    assert devices.cpu_has_bf16() is native
