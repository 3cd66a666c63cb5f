"""Stable Cascade (Würstchen v3): a prior makes 24x24 image embeddings, a decoder turns them into pixels.

Working in a latent 42 times smaller than the image is what makes it fast; the reference tutorial runs the prior in
bfloat16 (its weights were trained so) and the decoder in float16.
"""

from __future__ import annotations

from typing import Any

from imagegen.models.sources import ModelRef
from imagegen.recipes.base import (
    BuildContext,
    Defaults,
    Recipe,
    text_to_image_arguments,
)
from imagegen.request import GenerationRequest

# The repos publish their half-precision weights as the "bf16" variant.
CASCADE_PRIOR = ModelRef("stabilityai/stable-cascade-prior", "AI-ModelScope/stable-cascade-prior", half_variant="bf16")
CASCADE_DECODER = ModelRef("stabilityai/stable-cascade", "AI-ModelScope/stable-cascade", half_variant="bf16")
# The prior's latent is ceil(side / 42.67) and the decoder's image 42.67 times that: multiples of 128 come
# out at exactly the size asked for, other sizes would not.
SIDE_MULTIPLE = 128


def _two_stages(ctx: BuildContext) -> Any:
    from imagegen.pipelines.cascade import StableCascadeTwoStagePipeline

    return StableCascadeTwoStagePipeline(prior=ctx.pipeline("prior"), decoder=ctx.pipeline("base"))


def _arguments(pipe: Any, request: GenerationRequest) -> dict[str, Any]:
    return {**text_to_image_arguments(pipe, request), "decoder_steps": request.decoder_steps,
            "decoder_guidance_scale": request.decoder_guidance_scale}


STABLE_CASCADE = Recipe(
    name="stable-cascade",
    summary="Stable Cascade: prior (bf16, 20 steps, cfg 4) then decoder (fp16, 10 steps, cfg 0)",
    models={"base": CASCADE_DECODER, "prior": CASCADE_PRIOR},
    # --steps and --guidance are the prior's (the text-conditioned stage); the decoder has its own options.
    defaults=Defaults(num_inference_steps=20, guidance_scale=4.0, width=1024, height=1024,
                      decoder_steps=10, decoder_guidance_scale=0.0),
    build=_two_stages,
    arguments=_arguments,
    min_side=SIDE_MULTIPLE,
    side_multiple=SIDE_MULTIPLE,
    scheduler_choice=False,  # both stages need DDPMWuerstchenScheduler
    scheduler_slots=("prior.scheduler", "decoder.scheduler"),
    role_gpu_dtypes={"prior": "bfloat16"},
    denoiser=None,  # two denoisers, one per stage
)

RECIPES = (STABLE_CASCADE,)
