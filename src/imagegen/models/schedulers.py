"""Scheduler choices: our option names, diffusers' classes and AUTOMATIC1111's sampler names.

One table serves the `--scheduler` option, the infotext's `Sampler:` field and reading it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imagegen.errors import InvalidRequest


@dataclass(frozen=True)
class SchedulerChoice:
    name: str  # our option value
    class_name: str  # diffusers class
    a1111_name: str  # A1111's `Sampler:` value
    config: dict[str, Any] = field(default_factory=dict)
    a1111_schedule: str | None = None  # A1111's `Schedule type:` value, when it is not the default


SCHEDULERS: dict[str, SchedulerChoice] = {
    c.name: c
    for c in (
        SchedulerChoice("euler", "EulerDiscreteScheduler", "Euler"),
        SchedulerChoice("euler-a", "EulerAncestralDiscreteScheduler", "Euler a"),
        SchedulerChoice("dpm++2m", "DPMSolverMultistepScheduler", "DPM++ 2M"),
        SchedulerChoice("dpm++2m-karras", "DPMSolverMultistepScheduler", "DPM++ 2M",
                        {"use_karras_sigmas": True}, "Karras"),
        SchedulerChoice("dpm++sde", "DPMSolverSinglestepScheduler", "DPM++ SDE"),
        SchedulerChoice("ddim", "DDIMScheduler", "DDIM"),
        SchedulerChoice("heun", "HeunDiscreteScheduler", "Heun"),
        SchedulerChoice("lms", "LMSDiscreteScheduler", "LMS"),
        SchedulerChoice("pndm", "PNDMScheduler", "PLMS"),
        SchedulerChoice("unipc", "UniPCMultistepScheduler", "UniPC"),
        SchedulerChoice("lcm", "LCMScheduler", "LCM"),
    )
}


def get_scheduler_choice(name: str) -> SchedulerChoice:
    try:
        return SCHEDULERS[name]
    except KeyError:
        raise InvalidRequest(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}") from None


def make_scheduler(name: str, base_config: Any) -> Any:
    """A scheduler of the chosen kind that keeps the recipe's config (betas, timestep spacing...)."""
    import diffusers

    choice = get_scheduler_choice(name)
    return getattr(diffusers, choice.class_name).from_config(base_config, **choice.config)


def describe(scheduler: Any) -> SchedulerChoice:
    """The table entry of a live scheduler, for the infotext; unknown classes get their own name.

    A scheduler that reproduces a diffusers one (imagegen.builtin.dpm_solver) names it in `diffusers_class_name`.
    """
    karras = bool(getattr(scheduler.config, "use_karras_sigmas", False))
    class_name = getattr(scheduler, "diffusers_class_name", type(scheduler).__name__)
    for choice in SCHEDULERS.values():
        if choice.class_name == class_name and bool(choice.config.get("use_karras_sigmas")) == karras:
            return choice
    return SchedulerChoice(class_name, class_name, class_name)


def from_a1111(sampler: str, schedule: str | None) -> str | None:
    """Our option name for an A1111 sampler (and schedule type), or None when we have no such sampler."""
    for choice in SCHEDULERS.values():
        if choice.a1111_name == sampler and (choice.a1111_schedule or "Automatic") == (schedule or "Automatic"):
            return choice.name
    return None
