"""Live previews: a small picture of what a denoising step predicts, from the latents, at little cost.

The picture is the step's prediction of the final latents (the scheduler's `pred_original_sample` where it gives
one, as ComfyUI and A1111 show, else the current latents), decoded by the pipeline's tiny VAE when it runs one,
otherwise by a linear map from latent channels to RGB. The map is fitted here, per VAE, by least squares on a few
colour patches passed through the VAE's own encoder: no table of constants per model family, and it fits any
AutoencoderKL a model brings. Previews read tensors only, under no_grad, and draw no random numbers (the patches
come from a private generator), so a generation's pixels are the same with and without them.
"""

from __future__ import annotations

from typing import Any

import torch

PREVIEW_SIDE = 256  # the longer side of a preview image, in pixels
_PATCHES = 12  # colour patches the linear map is fitted on (4x4 latent pixels each: 192 samples, 5 unknowns)
_PATCH_SIDE = 32


class LatentPreviewer:
    """Turns a step's latents into a small RGB PIL image, for one pipeline's VAE."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae
        self._map: torch.Tensor | None = None  # (latent channels + 1, 3): weights and bias

    def accepts(self, latents: Any) -> bool:
        """Image latents of this VAE (4-D, its channel count); video and two-stage latents get no preview."""
        return (isinstance(latents, torch.Tensor) and latents.dim() == 4
                and latents.shape[1] == self.vae.config.latent_channels)

    @torch.no_grad()
    def image(self, latents: torch.Tensor) -> Any:
        """The first image of the batch, its longer side PREVIEW_SIDE at most."""
        from PIL import Image

        first = latents[:1]
        if type(self.vae).__name__ == "AutoencoderTiny":
            rgb = self.vae.decode(first.to(self.vae.dtype)).sample[0].float()
        else:
            rgb = torch.einsum("chw,cr->rhw", _with_ones(first[0].float()), self._fitted()).clamp(-1, 1)
        pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(pixels)
        scale = PREVIEW_SIDE / max(image.size)
        if scale < 1 or type(self.vae).__name__ != "AutoencoderTiny":
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.BILINEAR)
        return image

    def _fitted(self) -> torch.Tensor:
        if self._map is None:
            self._map = _fit_linear_map(self.vae)
        return self._map


def _with_ones(latent: torch.Tensor) -> torch.Tensor:
    """(C, H, W) with a channel of ones appended, for the map's bias row."""
    return torch.cat([latent, torch.ones_like(latent[:1])])


def _fit_linear_map(vae: Any) -> torch.Tensor:
    """Least-squares weights from (scaled) latent channels plus a bias to RGB in [-1, 1].

    Patches of smooth colour gradients are encoded as the pipeline's latents are made (latent mean times the
    scaling factor); each latent pixel is paired with the mean colour of the image block it covers.
    """
    generator = torch.Generator("cpu").manual_seed(0)
    corners = torch.rand(_PATCHES, 3, 2, 2, generator=generator) * 2 - 1
    patches = torch.nn.functional.interpolate(corners, size=(_PATCH_SIDE, _PATCH_SIDE), mode="bilinear",
                                              align_corners=True)
    parameter = next(vae.parameters())
    encoded = vae.encode(patches.to(parameter.device, parameter.dtype)).latent_dist.mean.float().cpu()
    latents = encoded * vae.config.scaling_factor
    colours = torch.nn.functional.adaptive_avg_pool2d(patches, latents.shape[-2:])
    inputs = torch.cat([latents, torch.ones_like(latents[:, :1])], dim=1).permute(0, 2, 3, 1).reshape(-1,
                                                                                                  latents.shape[1] + 1)
    targets = colours.permute(0, 2, 3, 1).reshape(-1, 3)
    return torch.linalg.lstsq(inputs, targets).solution
