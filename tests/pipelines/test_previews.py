"""Live previews: pictures of the predicted image while it denoises, which never change the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imagegen.pipelines.previews import PREVIEW_SIDE, LatentPreviewer
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("sdxl_models", "sd15_models", "taesd_models")


def generate_with_previews(engine, request: GenerationRequest, monkeypatch) -> tuple[np.ndarray, list]:
    monkeypatch.setattr("imagegen.engine.PREVIEW_INTERVAL_S", 0.0)  # every step, to see each one
    previews = []
    [image] = engine.generate(request, on_preview=lambda step, steps, picture: previews.append((step, steps,
                                                                                                  picture)))
    return np.asarray(image.image), previews


@pytest.mark.parametrize("fast", [None, "tiny-vae"])
def test_previews_leave_the_result_unchanged(engine, monkeypatch, fast) -> None:
    request = GenerationRequest(prompt="a lighthouse", recipe="sd15", seed=8, width=64, height=64,
                                num_inference_steps=4, fast=fast)
    [plain] = engine.generate(request)
    with_previews, previews = generate_with_previews(engine, request, monkeypatch)
    np.testing.assert_array_equal(with_previews, np.asarray(plain.image))
    steps = [step for step, _, _ in previews]
    assert len(steps) >= 4 and steps == sorted(steps) and previews[-1][:2] == (4, 4)
    assert all(isinstance(picture, Image.Image) and picture.mode == "RGB" for _, _, picture in previews)
    # the tiny VAE decodes at full size (64x64 here); the linear map works on latents, enlarged to the preview size
    assert previews[-1][2].size == ((64, 64) if fast else (PREVIEW_SIDE, PREVIEW_SIDE))


def test_the_colour_map_is_fitted_on_the_encoder_without_touching_the_seed(sdxl_models) -> None:
    """Random weights make no image worth comparing (their decoder does not invert their encoder); what can be
    checked is the fit itself: exact for an encoder that is linear in colour, as trained VAEs nearly are, and made
    without a draw from torch's global generator, which the generation's noise comes from."""
    from diffusers import AutoencoderKL
    from tiny_models import SDXL_TURBO, snapshot_path

    state = torch.random.get_rng_state()
    LatentPreviewer(AutoencoderKL.from_pretrained(snapshot_path(sdxl_models, SDXL_TURBO) / "vae"))._fitted()
    assert torch.equal(state, torch.random.get_rng_state())

    mixing = torch.tensor([[0.5, -0.3, 0.2], [0.1, 0.4, -0.6], [-0.7, 0.2, 0.3], [0.3, 0.3, 0.3]])
    previewer = LatentPreviewer(LinearEncoder(mixing, bias=torch.tensor([0.1, -0.2, 0.05, 0.0])))
    colour = torch.tensor([0.6, -0.2, 0.1])
    latents = (mixing @ colour + torch.tensor([0.1, -0.2, 0.05, 0.0])).view(1, 4, 1, 1).expand(1, 4, 8, 8)
    pixels = np.asarray(previewer.image(latents), dtype=float) / 127.5 - 1
    np.testing.assert_allclose(pixels.reshape(-1, 3).mean(0), colour.numpy(), atol=0.01)


class LinearEncoder(torch.nn.Module):
    """An encoder whose latent is a known linear function of each block's mean colour, with VAE's interface."""

    def __init__(self, mixing: torch.Tensor, bias: torch.Tensor) -> None:
        from types import SimpleNamespace

        super().__init__()
        self.mixing, self.bias = torch.nn.Parameter(mixing), bias
        self.config = SimpleNamespace(latent_channels=4, scaling_factor=1.0)

    def encode(self, images: torch.Tensor):  # noqa: ANN201 - diffusers' AutoencoderKLOutput shape
        from types import SimpleNamespace

        pooled = torch.nn.functional.avg_pool2d(images, 8)
        mean = torch.einsum("rc,nchw->nrhw", self.mixing, pooled) + self.bias.view(1, 4, 1, 1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean))
