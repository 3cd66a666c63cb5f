"""imagegen's DPM-Solver++(2M) takes the steps diffusers' DPMSolverMultistepScheduler takes."""

from __future__ import annotations

import pytest
import torch

from imagegen.builtin.dpm_solver import DPMSolverPlusPlus2M
from imagegen.builtin.model_config import read_config
from imagegen.recipes.dit import builtin_digits_folder

SHIPPED = builtin_digits_folder() / "scheduler"


def trajectories(config: dict, steps: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Both schedulers driven by the same fake model (a fixed function of the sample), step by step."""
    from diffusers import DPMSolverMultistepScheduler

    samples = []
    for scheduler in (DPMSolverPlusPlus2M.from_config(config), DPMSolverMultistepScheduler.from_config(config)):
        scheduler.set_timesteps(steps)
        generator = torch.Generator().manual_seed(steps)
        x = torch.randn(2, 1, 8, 8, generator=generator) * scheduler.init_noise_sigma
        fixed = torch.randn(2, 1, 8, 8, generator=generator)
        path = []
        for t in scheduler.timesteps:
            eps = 0.6 * scheduler.scale_model_input(x, t) + 0.3 * fixed * (t / 1000)
            x = scheduler.step(eps, t, x).prev_sample
            path.append(x)
        samples.append(path)
    return samples[0], samples[1]


@pytest.mark.parametrize("steps", [1, 2, 3, 15, 25])
@pytest.mark.parametrize("changes", [{}, {"timestep_spacing": "trailing"},
                                     {"timestep_spacing": "leading", "steps_offset": 1},
                                     {"final_sigmas_type": "sigma_min", "beta_schedule": "scaled_linear",
                                      "beta_start": 0.00085, "beta_end": 0.012}])
def test_matches_diffusers_step_by_step(steps: int, changes: dict) -> None:
    from diffusers import DPMSolverMultistepScheduler

    config = {**read_config(SHIPPED / "scheduler_config.json"), **changes}
    ours, theirs = DPMSolverPlusPlus2M.from_config(config), DPMSolverMultistepScheduler.from_config(config)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, rtol=0, atol=0)
    mine, reference = trajectories(config, steps)
    for a, b in zip(mine, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_keeps_the_config_and_reloads_from_it() -> None:
    scheduler = DPMSolverPlusPlus2M.from_pretrained(SHIPPED)
    assert scheduler.config.solver_order == 2 and scheduler.config["beta_schedule"] == "linear"
    again = type(scheduler).from_config(scheduler.config)
    assert again.config == scheduler.config


@pytest.mark.parametrize("changes", [{"use_karras_sigmas": True}, {"algorithm_type": "sde-dpmsolver++"},
                                     {"solver_order": 3}, {"prediction_type": "v_prediction"}])
def test_refuses_configs_it_cannot_follow(changes: dict) -> None:
    config = {**read_config(SHIPPED / "scheduler_config.json"), **changes}
    with pytest.raises(ValueError, match="cannot follow"):
        DPMSolverPlusPlus2M.from_config(config)
