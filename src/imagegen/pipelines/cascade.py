"""Stable Cascade as the reference tutorial runs it: the prior's image embeddings handed to the decoder, two calls.

diffusers' StableCascadeCombinedPipeline differs from the reference tutorial: it hands the prior's text embeddings
(from the prior's bf16 encoder) to the decoder instead of letting the decoder encode the prompt with its
own encoder, so its images differ. This class makes exactly the reference tutorial's two calls; the cast of the
embeddings to the decoder's dtype is the reference tutorial's `.half()`.
"""

from __future__ import annotations

from typing import Any


class StableCascadeTwoStagePipeline:
    """prior: a StableCascadePriorPipeline; decoder: a StableCascadeDecoderPipeline."""

    def __init__(self, prior: Any, decoder: Any) -> None:
        self.prior, self.decoder = prior, decoder

    def __call__(self, prompt: str, *, negative_prompt: str | None, width: int, height: int,
                 num_inference_steps: int, guidance_scale: float, decoder_steps: int,
                 decoder_guidance_scale: float, num_images_per_prompt: int, generator: Any,
                 output_type: str = "pil") -> Any:
        """Both stages draw from the same generators: image i's prior noise, then its decoder noise."""
        embeddings = self.prior(
            prompt=prompt, height=height, width=width, negative_prompt=negative_prompt,
            guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=num_inference_steps, generator=generator,
        ).image_embeddings
        return self.decoder(
            image_embeddings=embeddings.to(self.decoder.decoder.dtype), prompt=prompt,
            negative_prompt=negative_prompt, guidance_scale=decoder_guidance_scale, output_type=output_type,
            num_inference_steps=decoder_steps, generator=generator,
        )

    def to(self, device: str) -> StableCascadeTwoStagePipeline:
        self.prior.to(device)
        self.decoder.to(device)
        return self

    def enable_model_cpu_offload(self, device: str) -> None:
        self.prior.enable_model_cpu_offload(device=device)
        self.decoder.enable_model_cpu_offload(device=device)

    def enable_sequential_cpu_offload(self, device: str) -> None:
        self.prior.enable_sequential_cpu_offload(device=device)
        self.decoder.enable_sequential_cpu_offload(device=device)

    def set_progress_bar_config(self, **options: Any) -> None:
        self.prior.set_progress_bar_config(**options)
        self.decoder.set_progress_bar_config(**options)
