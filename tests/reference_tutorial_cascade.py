"""The reference tutorial's Stable Cascade snippet with plain diffusers, as the reference imagegen must match.

Kept apart from reference_tutorial.py because it needs the fixtures of tiny_cascade.py; it follows the same rules:
the snippet line by line, changed only where tests need it (Hugging Face repo ids looked up through
huggingface_hub, float32 on the CPU, a seeded CPU generator, a small size), plus the one change that current
diffusers needs to load the decoder repo at all (see `wuerstchen_module_alias`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from unittest import mock

from reference_tutorial import DEVICE, _generators
from tiny_cascade import CASCADE_DECODER, CASCADE_PRIOR, CASCADE_TEST_SIZE

if TYPE_CHECKING:
    from PIL.Image import Image


def stable_cascade(
    prompt: str,
    *,
    seed: int,
    prior_steps: int = 20,
    prior_guidance: float = 4.0,
    decoder_steps: int = 10,
    decoder_guidance: float = 0.0,
    width: int = CASCADE_TEST_SIZE,
    height: int = CASCADE_TEST_SIZE,
    num_images: int = 1,
    negative_prompt: str = "",
) -> list[Image]:
    """The prior turns the prompt into image embeddings, the decoder those embeddings into images.

    The reference tutorial loads the prior in bfloat16 and the decoder in float16 and casts the embeddings with
    ``.half()``; here both run in float32 and the cast becomes ``.to(decoder.dtype)``, which keeps its meaning
    (embeddings in the decoder's dtype) for any dtype.  The tutorial passes no generator; one generator (or one per
    image, seeded ``seed + i``) goes to both calls, so the decoder continues the random streams the prior left off.
    The decoder gets no ``num_images_per_prompt``: it infers the batch from the embeddings (one image per embedding).
    The output is width x height only where the real configs' size arithmetic allows it (tiny_cascade).
    """
    import torch
    from diffusers import StableCascadeDecoderPipeline, StableCascadePriorPipeline

    prior = StableCascadePriorPipeline.from_pretrained(CASCADE_PRIOR, torch_dtype=torch.float32).to(DEVICE)
    with wuerstchen_module_alias():
        decoder = StableCascadeDecoderPipeline.from_pretrained(CASCADE_DECODER, torch_dtype=torch.float32)
    decoder = decoder.to(DEVICE)
    generator = _generators(seed, num_images)
    prior_output = prior(
        prompt=prompt,
        height=height,
        width=width,
        negative_prompt=negative_prompt,
        guidance_scale=prior_guidance,
        num_images_per_prompt=num_images,
        num_inference_steps=prior_steps,
        generator=generator,
    )
    return decoder(
        image_embeddings=prior_output.image_embeddings.to(decoder.dtype),
        prompt=prompt,
        negative_prompt=negative_prompt,
        guidance_scale=decoder_guidance,
        output_type="pil",
        num_inference_steps=decoder_steps,
        generator=generator,
    ).images


@contextmanager
def wuerstchen_module_alias() -> Iterator[None]:
    """Make the decoder repo's ``"vqgan": ["wuerstchen", "PaellaVQModel"]`` loadable while the block runs.

    The repo names the diffusers pipeline folder that held PaellaVQModel when it was converted; current diffusers
    keeps that folder in ``diffusers.pipelines.deprecated``, and a library name that is neither a loadable library
    nor an attribute of ``diffusers.pipelines`` fails ``from_pretrained`` ("vqgan/wuerstchen.py as defined in
    `model_index.json` does not exist in stabilityai/stable-cascade and is not a module in 'diffusers/pipelines'"
    for a repo id, "wuerstchen is not one of the libraries Diffusers can load components from" for a folder), even
    with ``vqgan=`` passed.  The alias restores the old attribute and is removed afterwards, so that it does not
    leak into other tests.
    """
    from diffusers import pipelines
    from diffusers.pipelines.deprecated import wuerstchen

    with mock.patch.object(pipelines, "wuerstchen", wuerstchen, create=True):
        yield
