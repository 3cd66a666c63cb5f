"""Class-conditional sampling with classifier-free guidance, shared by every DiT pipeline, without diffusers.

`denoise` is the one sampling loop: a generator that yields the sample after each scheduler step, so a
preview and the final image come from the same code; `sample` drains it. The latent DiT pipeline
(dit_pipeline.py, on diffusers' DiffusionPipeline for VAE decoding and CPU offload) and `PixelDiTPipeline`
(the built-in digits model, which needs no diffusers at all) both sample through it.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imagegen.models.class_names import labels_from

Generators = torch.Generator | list[torch.Generator] | None


@dataclass(frozen=True)
class SampledImages:
    """As diffusers' ImagePipelineOutput: PIL images, a (N, H, W, C) array or a (N, C, H, W) tensor in [0, 1]."""

    images: Any


def draw_noise(shape: tuple[int, ...], *, generator: Generators, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """The first sample, drawn exactly as diffusers' `randn_tensor`.

    CPU generators draw on the CPU whatever the device (then the tensor moves), and a list of generators
    draws image i from generator i alone, so image i of a batch equals a single image from that seed.
    """
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    first = generator[0] if isinstance(generator, list) else generator
    draw_device = "cpu" if first is not None and first.device.type == "cpu" else device
    if isinstance(generator, list):
        noise = torch.cat([torch.randn((1, *shape[1:]), generator=g, device=draw_device, dtype=dtype)
                           for g in generator])
    else:
        noise = torch.randn(shape, generator=generator, device=draw_device, dtype=dtype)
    return noise.to(device)


def denoise(transformer: Any, scheduler: Any, class_labels: list[int], *, guidance_scale: float,
            num_inference_steps: int, generator: Generators, device: torch.device) -> Iterator[torch.Tensor]:
    """Yield the sample (N, C, H, W) after each of the scheduler's steps, starting from seeded noise.

    The null class is the transformer's `num_embeds_ada_norm` (class id == number of classes: DiT's label
    table keeps that "no class" row for classifier-free guidance). Guidance applies when the scale exceeds 1.
    """
    config = transformer.config
    channels = config.in_channels
    x = draw_noise((len(class_labels), channels, config.sample_size, config.sample_size),
                   generator=generator, device=device, dtype=transformer.dtype)  # (N, C, H, W)
    labels = torch.tensor(class_labels, device=device)  # (N,)
    guided = guidance_scale > 1
    if guided:  # conditional and unconditional halves in one batch (Ho & Salimans, 2022)
        labels = torch.cat([labels, torch.full_like(labels, config.num_embeds_ada_norm)])  # (2N,)
    # Stochastic schedulers draw their noise from the request's generators, when they accept them.
    step_options = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    scheduler.set_timesteps(num_inference_steps, device=device)
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = torch.cat([x, x]) if guided else x  # (2N or N, C, H, W)
        model_input = scheduler.scale_model_input(model_input, t)
        timesteps = t.expand(model_input.shape[0]).to(device)
        eps = transformer(model_input, timestep=timesteps, class_labels=labels).sample[:, :channels]
        if guided:
            conditional, unconditional = eps.chunk(2)
            eps = unconditional + guidance_scale * (conditional - unconditional)
        x = scheduler.step(eps, t, x, **step_options).prev_sample
        yield x


def sample(transformer: Any, scheduler: Any, class_labels: list[int], **options: Any) -> torch.Tensor:
    """The final sample of `denoise` (same arguments)."""
    x = None
    for x in denoise(transformer, scheduler, class_labels, **options):
        pass
    return x


def to_output(images: torch.Tensor, output_type: str) -> SampledImages:
    """Images in [-1, 1] (N, C, H, W) as `output_type` "pt", "np" or "pil", rounded as diffusers' numpy_to_pil."""
    images = (images / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return SampledImages(images)
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()  # (N, H, W, C)
    if output_type != "pil":
        return SampledImages(array)
    from PIL import Image

    pixels = (array * 255).round().astype("uint8")
    if pixels.shape[-1] == 1:
        return SampledImages([Image.fromarray(image.squeeze(-1), mode="L") for image in pixels])
    return SampledImages([Image.fromarray(image) for image in pixels])


class PixelDiTPipeline:
    """A class-conditional DiT working on pixels in [-1, 1] (no VAE): the built-in digits model.

    The engine calls it as a diffusers pipeline (`scheduler`, `to`, `set_progress_bar_config`, `__call__`
    with diffusers' argument names); it has no diffusers dependency of its own, so with imagegen's DiT and
    scheduler classes the built-in recipe never imports diffusers.
    """

    def __init__(self, transformer: Any, scheduler: Any, id2label: dict[str, str] | None = None) -> None:
        self.transformer, self.scheduler = transformer, scheduler
        self.id2label = id2label
        self.labels = labels_from(id2label)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device: str | torch.device) -> PixelDiTPipeline:
        self.transformer.to(device)
        return self

    def enable_model_cpu_offload(self, device: str | torch.device) -> None:
        """The model is a few MB: offloading would save nothing, so it simply moves to `device`."""
        self.to(device)

    enable_sequential_cpu_offload = enable_model_cpu_offload

    def set_progress_bar_config(self, **options: Any) -> None:
        """There is no progress bar: the engine reports steps through the scheduler."""

    @torch.no_grad()
    def __call__(self, class_labels: list[int], guidance_scale: float = 1.5, num_inference_steps: int = 15,
                 generator: Generators = None, output_type: str = "pil") -> SampledImages:
        images = sample(self.transformer, self.scheduler, class_labels, guidance_scale=guidance_scale,
                        num_inference_steps=num_inference_steps, generator=generator, device=self.device)
        return to_output(images, output_type)


def write_model_index(folder: Path, id2label: dict[str, str]) -> None:
    """The model_index.json of a pixel DiT folder that loads with imagegen's classes, without diffusers.

    The sub-folders keep diffusers' formats (transformer/config.json and its safetensors,
    scheduler/scheduler_config.json), so diffusers' classes read them as well.
    """
    index = {
        "_class_name": PixelDiTPipeline.__name__,
        "id2label": id2label,
        "scheduler": ["imagegen.builtin.dpm_solver", "DPMSolverPlusPlus2M"],
        "transformer": ["imagegen.builtin.dit_model", "DiT"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
