"""The digits recipe runs without diffusers and draws what the diffusers-based pipeline drew."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from imagegen.recipes.dit import builtin_digits_folder
from imagegen.request import GenerationRequest


def diffusers_digits(class_id: int, *, seed: int, num_images: int, steps: int = 15, guidance: float = 1.5) -> list:
    """The shipped model as it ran before imagegen had its own classes: diffusers' DiT and DPM-Solver++,
    diffusers' noise, the same guidance loop and diffusers' PIL conversion."""
    import torch
    from diffusers import DiTTransformer2DModel, DPMSolverMultistepScheduler
    from diffusers.utils.pil_utils import numpy_to_pil
    from diffusers.utils.torch_utils import randn_tensor

    folder = builtin_digits_folder()
    transformer = DiTTransformer2DModel.from_pretrained(folder / "transformer").eval()
    scheduler = DPMSolverMultistepScheduler.from_pretrained(folder / "scheduler")
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(num_images)]
    x = randn_tensor((num_images, 1, 8, 8), generator=generators, device=torch.device("cpu"), dtype=torch.float32)
    labels = torch.tensor([class_id] * num_images + [10] * num_images)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = transformer(torch.cat([x, x]), timestep=t.expand(2 * num_images), class_labels=labels).sample
            conditional, unconditional = eps.chunk(2)
            x = scheduler.step(unconditional + guidance * (conditional - unconditional), t, x).prev_sample
    return numpy_to_pil((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize(("prompt", "digit", "seed"), [("7", 7, 0), ("zero", 0, 11), ("digit four", 4, 123)])
def test_digits_match_the_diffusers_pipeline(engine, prompt: str, digit: int, seed: int) -> None:
    """Default settings (15 steps, guidance 1.5, 256x256): within one level of 255 of diffusers' pixels."""
    from PIL import Image

    ours = engine.generate(GenerationRequest(prompt=prompt, recipe="digits", seed=seed, num_images=3))
    theirs = [image.resize((256, 256), Image.Resampling.NEAREST)
              for image in diffusers_digits(digit, seed=seed, num_images=3)]
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.image.size == reference.size == (256, 256) and mine.image.mode == reference.mode == "L"
        difference = np.abs(np.asarray(mine.image, dtype=int) - np.asarray(reference, dtype=int))
        assert difference.max() <= 1


def test_diffusers_scheduler_gives_the_same_image_and_infotext(engine) -> None:
    """`--scheduler dpm++2m` swaps in diffusers' class: same sampler, same pixels, same infotext."""
    request = GenerationRequest(prompt="3", recipe="digits", seed=5, width=8, height=8)
    ours = engine.generate(request)[0]
    theirs = engine.generate(GenerationRequest(prompt="3", recipe="digits", seed=5, width=8, height=8,
                                               scheduler="dpm++2m"))[0]
    assert np.abs(np.asarray(ours.image, dtype=int) - np.asarray(theirs.image, dtype=int)).max() <= 1
    assert ours.infotext == theirs.infotext
    assert "Steps: 15, Sampler: DPM++ 2M, CFG scale: 1.5, Seed: 5, Size: 8x8, Model: imagegen/digits" in ours.infotext


def test_other_schedulers_still_run(engine) -> None:
    image = engine.generate(GenerationRequest(prompt="7", recipe="digits", seed=1, width=8, height=8,
                                              scheduler="euler"))[0]
    assert image.image.size == (8, 8) and "Sampler: Euler," in image.infotext


def test_digits_import_neither_diffusers_nor_transformers(tmp_path) -> None:
    code = ("import sys\nfrom imagegen.cli import main\n"
            f"main(['generate', '7', '--recipe', 'digits', '-o', {str(tmp_path / 'seven.png')!r}, '-q'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("[]"), result.stdout
    assert (tmp_path / "seven.png").exists()
