"""DiT's class-conditional sampling loop, in latent space (with a VAE) or pixel space (without).

diffusers' DiTPipeline hard-codes ImageNet's null class (1000), always decodes through a VAE, and
neither scales the first noise by the scheduler's init_noise_sigma nor gives stochastic schedulers
the request's generator, so only DDIM/DPM-Solver sample correctly with it. This pipeline takes the
null class from the transformer's config (class id == number of classes: DiT's label embedding keeps
that "no class" row for classifier-free guidance) and works with every scheduler. With DDIM or
DPM-Solver it gives DiTPipeline's pixels exactly (tested).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class ClassConditionalDiTPipeline(DiffusionPipeline):
    """transformer: a DiTTransformer2DModel; vae: its AutoencoderKL, or None when it works on pixels in [-1, 1]."""

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]

    def __init__(self, transformer: Any, scheduler: Any, vae: Any = None, id2label: dict[str, str] | None = None) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        self.register_to_config(id2label=id2label)
        # name -> class id, as DiTPipeline.labels: "7, seven" gives both names
        self.labels = {name.strip(): int(key) for key, names in (id2label or {}).items() for name in names.split(",")}

    @torch.no_grad()
    def __call__(self, class_labels: list[int], guidance_scale: float = 4.0, num_inference_steps: int = 25,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "pil") -> ImagePipelineOutput:
        config = self.transformer.config
        device = self._execution_device
        channels = config.in_channels
        latents = randn_tensor((len(class_labels), channels, config.sample_size, config.sample_size),
                               generator=generator, device=device, dtype=self.transformer.dtype)  # (N, C, H, W)
        labels = torch.tensor(class_labels, device=device)
        guided = guidance_scale > 1
        if guided:  # conditional and unconditional halves in one batch (Ho & Salimans, 2022)
            labels = torch.cat([labels, torch.full_like(labels, config.num_embeds_ada_norm)])
        # Stochastic schedulers draw their noise from the request's generators, when they accept them.
        step_options = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents, latents]) if guided else latents  # (2N or N, C, H, W)
            model_input = self.scheduler.scale_model_input(model_input, t)
            timesteps = t.expand(model_input.shape[0]).to(device)
            eps = self.transformer(model_input, timestep=timesteps, class_labels=labels).sample[:, :channels]
            if guided:
                conditional, unconditional = eps.chunk(2)
                eps = unconditional + guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(eps, t, latents, **step_options).prev_sample
        if self.vae is not None:
            latents = self.vae.decode(latents / self.vae.config.scaling_factor).sample  # (N, 3, H*f, W*f)
        images = (latents / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return ImagePipelineOutput(images=images)
        images = images.cpu().permute(0, 2, 3, 1).float().numpy()  # (N, H, W, C)
        return ImagePipelineOutput(images=self.numpy_to_pil(images) if output_type == "pil" else images)
