"""DPM-Solver++(2M) without diffusers: the built-in digits model's sampler.

Reproduces diffusers' DPMSolverMultistepScheduler (schedulers/scheduling_dpmsolver_multistep.py) for the
configurations a DDPM-trained epsilon model samples with: algorithm "dpmsolver++", solver order 2 with the
midpoint update, a beta schedule ("linear", "scaled_linear" or given betas), timesteps spaced "linspace",
"leading" or "trailing", and a final sigma of zero or sigma_min. Any other setting is refused with a
ValueError, so a config this class cannot follow exactly never samples silently wrong. It has the
scheduler interface the pipelines use (`from_config`, `config`, `set_timesteps`, `timesteps`,
`init_noise_sigma`, `scale_model_input`, `step`) and gives diffusers' samples up to float rounding
(tests/builtin/test_dpm_solver.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from imagegen.builtin.model_config import merged, read_config

CONFIG_NAME = "scheduler_config.json"
# DPMSolverMultistepScheduler's defaults, for entries a config leaves out.
DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "solver_order": 2,
    "prediction_type": "epsilon",
    "thresholding": False,
    "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint",
    "lower_order_final": True,
    "euler_at_final": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
    "final_sigmas_type": "zero",
    "lambda_min_clipped": -float("inf"),
    "variance_type": None,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
    "use_dynamic_shifting": False,
}
# What this class follows exactly; diffusers' other options change the arithmetic.
SUPPORTED: dict[str, tuple[Any, ...]] = {
    "algorithm_type": ("dpmsolver++",),
    "solver_order": (2,),
    "solver_type": ("midpoint",),
    "prediction_type": ("epsilon",),
    "beta_schedule": ("linear", "scaled_linear"),
    "timestep_spacing": ("linspace", "leading", "trailing"),
    "final_sigmas_type": ("zero", "sigma_min"),
    "thresholding": (False,),
    "use_karras_sigmas": (False,),
    "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,),
    "use_lu_lambdas": (False,),
    "use_flow_sigmas": (False,),
    "use_dynamic_shifting": (False,),
    "rescale_betas_zero_snr": (False,),
    "euler_at_final": (False,),
    "variance_type": (None,),
}


class SchedulerOutput(NamedTuple):
    prev_sample: torch.Tensor


class DPMSolverPlusPlus2M:
    """DPM-Solver++(2M) (Lu et al., 2022, arXiv:2211.01095, Algorithm 2) on a discrete DDPM noise schedule."""

    # The diffusers scheduler this one reproduces: the infotext names the sampler by it ("DPM++ 2M").
    diffusers_class_name: ClassVar[str] = "DPMSolverMultistepScheduler"
    init_noise_sigma = 1.0  # variance-preserving: the first sample is unit noise

    def __init__(self, config: Mapping[str, Any]) -> None:
        config = merged(DEFAULTS, config)
        config["_class_name"] = self.diffusers_class_name
        if config.trained_betas is None:
            unsupported = {k: config[k] for k, allowed in SUPPORTED.items() if config[k] not in allowed}
        else:
            unsupported = {k: config[k] for k, allowed in SUPPORTED.items()
                           if k != "beta_schedule" and config[k] not in allowed}
        if unsupported:
            raise ValueError(f"{type(self).__name__} cannot follow {unsupported}; use diffusers' "
                             f"DPMSolverMultistepScheduler for that config")
        self.config = config
        n = config.num_train_timesteps
        if config.trained_betas is not None:
            betas = torch.tensor(config.trained_betas, dtype=torch.float32)
        elif config.beta_schedule == "linear":
            betas = torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float32)
        else:  # "scaled_linear": Stable Diffusion's schedule
            betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=torch.float32) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # (T,)
        alpha_t, sigma_t = torch.sqrt(self.alphas_cumprod), torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(alpha_t) - torch.log(sigma_t)  # (T,) half log-SNR
        self.timesteps = torch.from_numpy(np.linspace(0, n - 1, n, dtype=np.float32)[::-1].copy())
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.num_inference_steps: int | None = None
        self._reset()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> DPMSolverPlusPlus2M:
        return cls({**config, **overrides})

    @classmethod
    def from_pretrained(cls, path: Path) -> DPMSolverPlusPlus2M:
        """The scheduler whose scheduler_config.json is in `path` (diffusers' format)."""
        return cls(read_config(Path(path) / CONFIG_NAME))

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Called once before sampling: picks the timesteps and their sigmas, and forgets earlier steps."""
        config = self.config
        clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), config.lambda_min_clipped)
        last = (config.num_train_timesteps - clipped).item()
        if config.timestep_spacing == "linspace":
            timesteps = np.linspace(0, last - 1, num_inference_steps + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif config.timestep_spacing == "leading":
            ratio = last // (num_inference_steps + 1)
            timesteps = (np.arange(0, num_inference_steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
            timesteps += config.steps_offset
        else:  # "trailing"
            ratio = config.num_train_timesteps / num_inference_steps
            timesteps = np.arange(last, 0, -ratio).round().copy().astype(np.int64) - 1
        # .numpy(), not np.array(tensor): numpy 2 asks __array__ for copy=, which torch's does not take (a warning).
        all_sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()  # (T,)
        sigmas = np.interp(timesteps, np.arange(0, len(all_sigmas)), all_sigmas)
        last_sigma = 0 if config.final_sigmas_type == "zero" else all_sigmas[0]
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last_sigma]]).astype(np.float32))  # (S+1,)
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)  # (S,)
        self.num_inference_steps = len(timesteps)
        self._reset()

    def scale_model_input(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The model sees the sample unscaled (variance-preserving)."""
        return sample

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None) -> SchedulerOutput:
        """Called once per timestep, in order: the sample at the next timestep. The solver is deterministic,
        so `generator` is accepted for the common interface and not used."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self._step_index is None:
            self._step_index = self._index_for(timestep)
        i = self._step_index
        last = i == len(self.timesteps) - 1
        # diffusers' lower_order_final: the last step is first order when the final sigma is zero or the
        # schedule is short (< 15 steps), which keeps few-step sampling stable.
        first_order = self._lower_order_nums < 1 or (last and (
            self.config.final_sigmas_type == "zero" or (self.config.lower_order_final and len(self.timesteps) < 15)))
        data = self._data_prediction(model_output, sample)
        self._data_predictions = [self._data_predictions[-1], data]
        sample = sample.to(torch.float32)
        prev = self._first_order(data, sample) if first_order else self._second_order(sample)
        self._lower_order_nums = min(self._lower_order_nums + 1, 2)
        self._step_index += 1
        return SchedulerOutput(prev.to(data.dtype))

    def _reset(self) -> None:
        self._data_predictions: list[torch.Tensor | None] = [None, None]
        self._lower_order_nums = 0
        self._step_index: int | None = None

    def _index_for(self, timestep: int | torch.Tensor) -> int:
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(self.timesteps.device)
        candidates = (self.timesteps == timestep).nonzero()
        if len(candidates) == 0:
            return len(self.timesteps) - 1
        return candidates[1 if len(candidates) > 1 else 0].item()

    def _alpha_sigma(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """alpha_t, sigma_t and lambda_t = log(alpha_t / sigma_t) at schedule position `index`."""
        sigma = self.sigmas[index]
        alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
        sigma_t = sigma * alpha_t
        return alpha_t, sigma_t, torch.log(alpha_t) - torch.log(sigma_t)

    def _data_prediction(self, eps: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sigma_t * eps) / alpha_t: DPM-Solver++ integrates the data prediction."""
        alpha_t, sigma_t, _ = self._alpha_sigma(self._step_index)
        return (sample - sigma_t * eps) / alpha_t

    def _first_order(self, data: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """DPM-Solver++(1), i.e. DDIM: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) x0."""
        alpha_t, sigma_t, lambda_t = self._alpha_sigma(self._step_index + 1)
        _, sigma_s, lambda_s = self._alpha_sigma(self._step_index)
        h = lambda_t - lambda_s
        return (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * data

    def _second_order(self, sample: torch.Tensor) -> torch.Tensor:
        """DPM-Solver++(2M), midpoint form: the last two data predictions extrapolate the integral."""
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma(i + 1)
        _, sigma_s0, lambda_s0 = self._alpha_sigma(i)
        _, _, lambda_s1 = self._alpha_sigma(i - 1)
        m1, m0 = self._data_predictions
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        d1 = (1.0 / (h_0 / h)) * (m0 - m1)
        return ((sigma_t / sigma_s0) * sample
                - (alpha_t * (torch.exp(-h) - 1.0)) * m0
                - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1)
