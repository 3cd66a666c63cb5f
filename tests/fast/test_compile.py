"""--fast compile: the denoiser's repeated blocks compiled (diffusers' regional compilation) after fusing its QKV
projections and laying it out channels_last; a failing compiler falls back to eager, never failing the job."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from tiny_sd15 import SD15

from imagegen.engine import Engine, EngineOptions
from imagegen.errors import Notice
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("sd15_models")
REQUEST = GenerationRequest(prompt="a lighthouse", recipe="sd15", seed=3, width=64, height=64, num_inference_steps=3)


def fused_reference() -> np.ndarray:
    """diffusers' documented preparation for torch.compile, run eagerly."""
    import torch
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(SD15, torch_dtype=torch.float32)
    pipe.safety_checker = None
    pipe.unet.fuse_qkv_projections()
    pipe.unet.to(memory_format=torch.channels_last)
    return np.asarray(pipe(prompt="a lighthouse", num_inference_steps=3, width=64, height=64,
                           generator=torch.Generator("cpu").manual_seed(3)).images[0])


def test_a_failing_compiler_runs_eagerly_with_a_notice(offline_hf_cache, monkeypatch) -> None:
    import torch

    engine = Engine(EngineOptions(device="cpu"))  # its own: the shared engine must not keep the eager fallback

    def broken_compile(function, **options):
        def compiled(*args, **kwargs):
            raise RuntimeError("InductorError: C++ compiler not found\nmore detail")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(Notice, match=r"--fast compile: compiling failed \(InductorError: C\+\+ compiler not found\); "
                                    "running eagerly"):
        [image] = engine.generate(replace(REQUEST, fast="compile"))
    np.testing.assert_array_equal(np.asarray(image.image), fused_reference())
    assert "Fast: compile" in image.infotext
    [again] = engine.generate(replace(REQUEST, fast="compile"))  # eager from then on, without another notice
    np.testing.assert_array_equal(np.asarray(again.image), np.asarray(image.image))


@pytest.mark.slow
def test_compiled_blocks_match_eager_and_keep_their_kernels_on_disk(engine, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    [compiled] = engine.generate(replace(REQUEST, fast="compile", seed=4))
    [eager] = engine.generate(replace(REQUEST, seed=4))
    compiled_blocks = [module for pipe, _ in engine._pipelines.values() for module in pipe.unet.modules()
                       if "forward" in vars(module)]
    difference = np.abs(np.asarray(compiled.image, dtype=int) - np.asarray(eager.image, dtype=int))
    assert difference.max() <= 2  # kernel fusion reorders float sums: a level at most
    assert compiled_blocks and {type(block).__name__ for block in compiled_blocks} == {"BasicTransformerBlock"}
    assert any(tmp_path.rglob("*.py")) or any(tmp_path.rglob("*.so"))  # inductor's kernels, for the next process
