"""The engine against the reference tutorial's own diffusers code, on the same tiny weights: identical pixels."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import reference_tutorial

from imagegen.errors import Cancelled, InvalidRequest
from imagegen.recipes import get_recipe
from imagegen.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("sdxl_models")  # SDXL's recipes and DiT; sd15 where a test asks for it

PROMPT = "Beautiful and cute girl, rain jacket, soft lighting"
SIZE = {"width": 64, "height": 64}


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def run(engine, recipe: str, **options):
    return engine.generate(GenerationRequest(**{"prompt": PROMPT, "recipe": recipe, **SIZE, **options}))


@pytest.mark.parametrize(
    ("recipe", "options", "reference"),
    [
        ("sdxl", {"num_inference_steps": 3}, lambda: reference_tutorial.sdxl(PROMPT, seed=7, steps=3, **SIZE)),
        ("sdxl-turbo", {}, lambda: reference_tutorial.sdxl_turbo(PROMPT, seed=7, **SIZE)),
        ("lcm-sdxl", {}, lambda: reference_tutorial.lcm_sdxl(PROMPT, seed=7, **SIZE)),
        ("sdxl-lightning", {}, lambda: reference_tutorial.sdxl_lightning(PROMPT, seed=7, steps=4, **SIZE)),
        ("sdxl-lightning", {"num_inference_steps": 1},
         lambda: reference_tutorial.sdxl_lightning(PROMPT, seed=7, steps=1, **SIZE)),
        ("sdxl-lightning", {"num_inference_steps": 2},
         lambda: reference_tutorial.sdxl_lightning(PROMPT, seed=7, steps=2, **SIZE)),
    ],
    ids=["sdxl", "sdxl-turbo", "lcm-sdxl", "lightning-4", "lightning-1", "lightning-2"],
)
def test_recipe_matches_the_reference_tutorial_pixel_for_pixel(engine, recipe, options, reference) -> None:
    ours = run(engine, recipe, seed=7, **options)
    theirs = reference()
    assert len(ours) == len(theirs) == 1
    assert ours[0].image.size == (64, 64)
    np.testing.assert_array_equal(pixels(ours[0].image), pixels(theirs[0]))


def test_several_images_use_seed_plus_index(engine) -> None:
    batch = run(engine, "sdxl-turbo", seed=11, num_images=3)
    assert [image.seed for image in batch] == [11, 12, 13]
    reference = reference_tutorial.sdxl_turbo(PROMPT, seed=11, num_images=3, **SIZE)
    for ours, theirs in zip(batch, reference):
        np.testing.assert_array_equal(pixels(ours.image), pixels(theirs))
    alone = run(engine, "sdxl-turbo", seed=12)
    # Same noise; CPU kernels sum in a batch-size-dependent order, so allow one level of rounding.
    difference = np.abs(pixels(alone[0].image).astype(int) - pixels(batch[1].image).astype(int))
    assert difference.max() <= 1


def test_no_seed_draws_one_and_reports_it(engine) -> None:
    first = run(engine, "sdxl-turbo")[0]
    again = run(engine, "sdxl-turbo", seed=first.seed)[0]
    assert f"Seed: {first.seed}," in first.infotext
    np.testing.assert_array_equal(pixels(first.image), pixels(again.image))


def test_recipes_share_the_sdxl_base_text_encoders_and_vae(engine) -> None:
    from imagegen.recipes import get_recipe

    run(engine, "sdxl", seed=1, num_inference_steps=1)
    loads_before = engine.store.loads
    run(engine, "lcm-sdxl", seed=1)
    assert engine.store.loads == loads_before + 1, "switching to LCM loads its UNet and nothing else"
    pipelines = [entry[0] for entry in engine._pipelines.values()]
    sdxl_pipe, lcm_pipe = pipelines[-2:]
    for name in ("text_encoder", "text_encoder_2", "vae", "tokenizer"):
        assert getattr(sdxl_pipe, name) is getattr(lcm_pipe, name)
    assert sdxl_pipe.unet is not lcm_pipe.unet
    assert get_recipe("lcm-sdxl").models["base"] == get_recipe("sdxl").models["base"]


def test_progress_reports_every_step(engine) -> None:
    seen: list[tuple[int, int]] = []
    engine.generate(GenerationRequest(prompt=PROMPT, recipe="lcm-sdxl", seed=3, **SIZE),
                    on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cancel_stops_between_steps(engine) -> None:
    cancel = threading.Event()
    seen: list[int] = []

    def on_step(i: int, n: int) -> None:
        seen.append(i)
        if i == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        engine.generate(GenerationRequest(prompt=PROMPT, recipe="lcm-sdxl", seed=3, **SIZE),
                        on_step=on_step, cancel=cancel)
    assert seen == [1, 2]
    assert len(run(engine, "lcm-sdxl", seed=3)) == 1, "the engine still works after a cancel"


def test_scheduler_override_changes_the_sampler(engine) -> None:
    image = run(engine, "sdxl", seed=5, num_inference_steps=2, scheduler="dpm++2m-karras")[0]
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in image.infotext
    plain = run(engine, "sdxl", seed=5, num_inference_steps=2)[0]
    assert "Sampler: Euler," in plain.infotext
    assert not np.array_equal(pixels(image.image), pixels(plain.image))


def test_lightning_refuses_step_counts_it_has_no_unet_for(engine) -> None:
    with pytest.raises(InvalidRequest, match="1, 2, 4, 8 steps only, got 3"):
        run(engine, "sdxl-lightning", num_inference_steps=3)


@pytest.mark.parametrize("prompt", ["golden retriever", "Golden  Retriever", "207"])
def test_dit_matches_diffusers_dit_pipeline(engine, prompt) -> None:
    ours = engine.generate(GenerationRequest(prompt=prompt, recipe="dit", seed=4, num_images=2,
                                             num_inference_steps=5, **SIZE))
    theirs = reference_tutorial.dit("golden retriever", seed=4, steps=5, num_images=2)
    for mine, reference in zip(ours, theirs):
        np.testing.assert_array_equal(pixels(mine.image), pixels(reference))
    assert "Sampler: DPM++ 2M," in ours[0].infotext and "Model: facebook/DiT-XL-2-256" in ours[0].infotext


def test_dit_reports_progress_and_refuses_unknown_classes_and_sizes(engine) -> None:
    seen: list[tuple[int, int]] = []
    engine.generate(GenerationRequest(prompt="otter", recipe="dit", seed=1, num_inference_steps=3, **SIZE),
                    on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(InvalidRequest, match="knows no class 'golden retreiver'.*Did you mean 'golden retriever'"):
        run(engine, "dit", prompt="golden retreiver")
    with pytest.raises(InvalidRequest, match="generates 64x64 images only, got 128x128"):
        engine.generate(GenerationRequest(prompt="otter", recipe="dit", width=128, height=128))


def test_dit_samples_correctly_with_euler_too(engine) -> None:
    """Euler starts from noise scaled by its init_noise_sigma (~14.6), which diffusers' DiTPipeline forgets
    (its Euler image is ~33 levels off); solved properly, Euler lands where 25 DPM-Solver steps do."""
    def image(scheduler: str) -> np.ndarray:
        return pixels(run(engine, "dit", prompt="otter", seed=3, num_inference_steps=25, scheduler=scheduler)[0].image)

    reference = image("dpm++2m").astype(float)
    assert np.abs(image("euler").astype(float) - reference).mean() < 5


BATCHED_PROMPTS = {"digits": ("3", "7"), "dit": ("otter", "golden retriever")}


@pytest.mark.parametrize("recipe", ["sdxl-turbo", "sd15", "digits", "dit"])
def test_requests_batched_into_one_call_match_each_run_alone(engine, sd15_models, recipe) -> None:
    """A server's batching: different prompts (class labels for the class-conditional recipes) and seeds in one
    pipeline call, each image as if run alone (the CPU sums a batch in another order: at most one level apart)."""
    steps = {"num_inference_steps": 2} if recipe in ("sd15", "dit") else {}
    first, second = BATCHED_PROMPTS.get(recipe, ("a cat", "a dog in the rain"))
    requests = [GenerationRequest(prompt=prompt, recipe=recipe, seed=seed, num_images=n, **SIZE, **steps)
                for prompt, seed, n in ((first, 1, 2), (second, 50, 1))]
    assert engine.batch_key(requests[0].resolve(get_recipe(recipe))) == \
        engine.batch_key(requests[1].resolve(get_recipe(recipe)))
    batched = engine.generate_many(requests)
    for request, results in zip(requests, batched):
        alone = engine.generate(request)
        assert [image.seed for image in results] == [image.seed for image in alone]
        assert [image.infotext for image in results] == [image.infotext for image in alone]
        for mine, single in zip(results, alone):
            assert np.abs(pixels(mine.image).astype(int) - pixels(single.image).astype(int)).max() <= 1


def test_requests_that_differ_in_more_than_prompt_and_seed_are_not_batched(engine) -> None:
    first = GenerationRequest(prompt="a", recipe="sdxl-turbo", seed=1, **SIZE)
    with pytest.raises(InvalidRequest, match="differ in more than prompt, seed and count"):
        engine.generate_many([first, GenerationRequest(prompt="a", recipe="sdxl-turbo", seed=1, width=128, height=64)])
    assert engine.batch_key(GenerationRequest(prompt="a", recipe="stable-cascade", seed=1)) is None
