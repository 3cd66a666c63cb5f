"""The digits trainer writes a folder the digits recipe runs, reproducibly; the shipped model draws digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imagegen.builtin.train_digits import LOG_EVERY, PIXEL_MAX, digits_split, train
from imagegen.recipes.dit import builtin_digits_folder
from imagegen.request import GenerationRequest

WEIGHTS = Path("transformer") / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A 30-step model: enough to exercise every part of training, far too short to draw digits."""
    out = tmp_path_factory.mktemp("digits30")
    return out, train(out, max_steps=30, progress=False)


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / WEIGHTS)


def test_trained_folder_loads_in_the_digits_recipe(engine, short_run) -> None:
    out, _ = short_run
    results = engine.generate(GenerationRequest(prompt="seven", recipe="digits", model=str(out), seed=1,
                                                width=8, height=8, num_inference_steps=5))
    assert len(results) == 1
    assert results[0].image.mode == "L"
    assert results[0].image.size == (8, 8)
    index = json.loads((out / "model_index.json").read_text())
    assert index == json.loads((builtin_digits_folder() / "model_index.json").read_text()), \
        "a retrained folder loads with the same classes as the shipped one"
    for config in ("transformer/config.json", "scheduler/scheduler_config.json"):
        assert json.loads((out / config).read_text()) == json.loads((builtin_digits_folder() / config).read_text())


def test_training_log_records_the_run(short_run) -> None:
    out, summary = short_run
    log = json.loads((out / "training_log.json").read_text())
    assert summary["steps"] == log["steps"] == 30
    assert log["seed"] == summary["seed"] == 0
    assert log["final_loss"] == summary["final_loss"] > 0
    assert log["parameters"] == summary["parameters"] > 0
    for field in ("minutes", "seconds", "torch", "diffusers", "losses", "transformer", "noise_schedule"):
        assert field in log
    assert [entry["step"] for entry in log["losses"]] == list(range(LOG_EVERY, 31, LOG_EVERY))


def test_same_seed_gives_identical_weights(tmp_path: Path) -> None:
    import torch

    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(tmp_path / name, max_steps=3, seed=seed, progress=False)
    first, again, other = (weights(tmp_path / name) for name in "abc")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_shipped_weights_stay_small() -> None:
    assert (builtin_digits_folder() / WEIGHTS).stat().st_size < 10 * 2**20


def test_shipped_model_draws_sevens(engine) -> None:
    """A classifier fitted on real digits reads the shipped model's sevens (recipe defaults, 8x8) as 7."""
    from sklearn.svm import SVC

    split = digits_split()
    judge = SVC(gamma="scale").fit(split.x_train, split.y_train)
    results = engine.generate(GenerationRequest(prompt="7", recipe="digits", seed=0, num_images=16,
                                                width=8, height=8))
    pixels = np.stack([np.asarray(r.image, dtype=np.float64).reshape(-1) for r in results])  # (16, 64)
    read = judge.predict(np.round(pixels / 255 * PIXEL_MAX))
    assert (read == 7).sum() >= 14, read
