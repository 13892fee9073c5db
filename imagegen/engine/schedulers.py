"""The schedulers a request may name, built fresh per request from the model's own config.

A scheduler keeps per-run state (timesteps, step index), so sharing the pipeline's instance
between concurrent requests would mix their runs up; every request gets its own.
"""

from __future__ import annotations

from typing import Any, get_args

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from imagegen.schemas import SIGMA_SCHEDULES, SchedulerName

SDE = {"algorithm_type": "sde-dpmsolver++"}
# name -> (class, config overrides); overrides pick the well-known variant of a class.
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {}),
    "dpm++_sde": (DPMSolverSDEScheduler, {}),
    "dpm++_2m_sde": (DPMSolverMultistepScheduler, SDE),
    "dpm++_3m_sde": (DPMSolverMultistepScheduler, {**SDE, "solver_order": 3}),
    "dpm++_2s": (DPMSolverSinglestepScheduler, {"lower_order_final": True}),
    "dpm2": (KDPM2DiscreteScheduler, {}),
    "dpm2_a": (KDPM2AncestralDiscreteScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "lms": (LMSDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),
    # SD3's and FLUX.1's: they denoise along a flow, not a noise schedule.
    "flow_match_euler": (FlowMatchEulerDiscreteScheduler, {}),
}
SCHEDULER_NAMES: tuple[str, ...] = get_args(SchedulerName)


def compatible_schedulers(scheduler: SchedulerMixin) -> list[str]:
    """The registry names a pipeline whose default scheduler is ``scheduler`` accepts."""
    compatible = {type(scheduler), *scheduler.compatibles}
    if DDIMScheduler in compatible:  # LCM samples the same noise schedule (for LCM models)
        compatible.add(LCMScheduler)
    return [name for name, (cls, _) in SCHEDULERS.items() if cls in compatible]


def name_of(scheduler: SchedulerMixin) -> str:
    """The registry name closest to ``scheduler``, or its class name when none matches."""
    config = scheduler.config
    # Most specific variant first, so a DPM++ 2M SDE is not reported as plain DPM++.
    by_specificity = sorted(SCHEDULERS.items(), key=lambda item: -len(item[1][1]))
    for name, (cls, overrides) in by_specificity:
        if type(scheduler) is cls and all(config.get(k) == v for k, v in overrides.items()):
            return name
    return type(scheduler).__name__


def schedule_options(schedule: str | None) -> dict[str, Any]:
    """The config that gives a scheduler A1111's schedule type ``schedule``."""
    if schedule is None:
        return {}
    if schedule == "sgm_uniform":  # evenly spaced from the last timestep, as SGM's samplers
        return {"timestep_spacing": "trailing"}
    if schedule == "uniform":  # evenly spaced over all timesteps (A1111's Normal, Uniform)
        return {"timestep_spacing": "linspace"}
    return {f"use_{schedule}_sigmas": True}


def build_scheduler(
    name: str, schedule: str | None, seeds: list[int], base: SchedulerMixin
) -> SchedulerMixin:
    """A new scheduler of kind ``name`` that keeps the model's noise schedule (betas, offsets),
    spaced by ``schedule``. ``seeds`` (one per image of the call) seed what draws its own
    noise: DPM++ SDE's Brownian tree, one per image, so an image depends on its seed alone."""
    cls, overrides = SCHEDULERS[name]
    options = {**overrides, **schedule_options(schedule)}
    if cls is DPMSolverSDEScheduler:
        options["noise_sampler_seed"] = seeds
    # A base with another schedule's flag set (a Karras model default) keeps only this one's.
    flags = (f"use_{other}_sigmas" for other in SIGMA_SCHEDULES)
    cleared = {flag: False for flag in flags if base.config.get(flag)}
    return cls.from_config({**base.config, **cleared}, **options)
