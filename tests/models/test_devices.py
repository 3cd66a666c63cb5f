"""Device-level choices: the SDPA kernel (`--attention`) and what fp8 needs."""

from __future__ import annotations

import numpy as np
import pytest

from imagegen.engine import Engine, EngineOptions
from imagegen.errors import InvalidRequest
from imagegen.models.devices import fp8_unsupported
from imagegen.request import GenerationRequest


def test_an_unknown_attention_kernel_is_refused_before_anything_loads() -> None:
    with pytest.raises(InvalidRequest, match="unknown attention kernel 'flash2'; choose one of auto, flash, cudnn"):
        Engine(EngineOptions(device="cpu", attention="flash2"))


@pytest.mark.usefixtures("sd15_models")
def test_the_math_kernel_gives_the_default_image_up_to_rounding(engine) -> None:
    request = GenerationRequest(prompt="a lighthouse", recipe="sd15", seed=3, width=64, height=64,
                                num_inference_steps=2)
    [default] = engine.generate(request)
    [math] = Engine(EngineOptions(device="cpu", attention="math")).generate(request)
    difference = np.abs(np.asarray(math.image, dtype=int) - np.asarray(default.image, dtype=int))
    assert difference.max() <= 1


def test_a_kernel_that_cannot_serve_the_call_fails_with_torchs_reason() -> None:
    import torch

    from imagegen.models.devices import sdpa_backend

    query = torch.zeros(1, 1, 4, 8)
    with sdpa_backend("cudnn"), pytest.raises(RuntimeError, match="No viable backend"):
        torch.nn.functional.scaled_dot_product_attention(query, query, query)  # cuDNN's kernel needs a GPU


def test_fp8_needs_a_recent_cuda_gpu() -> None:
    assert fp8_unsupported("cpu") == "needs a CUDA GPU of compute capability 8.9+ (Ada, Hopper), not cpu"
