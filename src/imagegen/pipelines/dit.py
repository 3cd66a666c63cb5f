"""DiT's class-conditional sampling in latent space, decoded by a VAE (facebook's ImageNet DiT).

diffusers' DiTPipeline hard-codes ImageNet's null class (1000), always decodes through a VAE, and
neither scales the first noise by the scheduler's init_noise_sigma nor gives stochastic schedulers
the request's generator, so only DDIM/DPM-Solver sample correctly with it. This pipeline samples
through imagegen's shared loop (class_conditional.denoise), which takes the null class from the
transformer's config and works with every scheduler. With DDIM or DPM-Solver it gives DiTPipeline's
pixels exactly (tested). It stays a DiffusionPipeline for CPU offload and the VAE.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from imagegen.models.class_names import labels_from
from imagegen.pipelines.class_conditional import Generators, sample, to_output


class ClassConditionalDiTPipeline(DiffusionPipeline):
    """transformer: a DiTTransformer2DModel; vae: the AutoencoderKL its latents decode with.

    Pixel-space models (the built-in digits) use class_conditional.PixelDiTPipeline instead.
    """

    model_cpu_offload_seq = "transformer->vae"

    def __init__(self, transformer: Any, scheduler: Any, vae: Any, id2label: dict[str, str] | None = None) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        self.register_to_config(id2label=id2label)
        self.labels = labels_from(id2label)

    @torch.no_grad()
    def __call__(self, class_labels: list[int], guidance_scale: float = 4.0, num_inference_steps: int = 25,
                 generator: Generators = None, output_type: str = "pil") -> ImagePipelineOutput:
        latents = sample(self.transformer, self.scheduler, class_labels, guidance_scale=guidance_scale,
                         num_inference_steps=num_inference_steps, generator=generator,
                         device=self._execution_device)  # (N, C, h, w)
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample  # (N, 3, H, W)
        return ImagePipelineOutput(images=to_output(images, output_type).images)
