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
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from imagegen.schemas import SchedulerName

# name -> (class, config overrides); overrides pick the well-known variant of a class.
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {}),
    "dpm++_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "lms": (LMSDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    # SD3's and FLUX.1's: they denoise along a flow, not a noise schedule.
    "flow_match_euler": (FlowMatchEulerDiscreteScheduler, {}),
}
SCHEDULER_NAMES: tuple[str, ...] = get_args(SchedulerName)


def compatible_schedulers(scheduler: SchedulerMixin) -> list[str]:
    """The registry names a pipeline whose default scheduler is ``scheduler`` accepts."""
    compatible = {type(scheduler), *scheduler.compatibles}
    return [name for name, (cls, _) in SCHEDULERS.items() if cls in compatible]


def name_of(scheduler: SchedulerMixin) -> str:
    """The registry name closest to ``scheduler``, or its class name when none matches."""
    config = scheduler.config
    # Most specific variant first, so a Karras DPM++ is not reported as plain DPM++.
    by_specificity = sorted(SCHEDULERS.items(), key=lambda item: -len(item[1][1]))
    for name, (cls, overrides) in by_specificity:
        if type(scheduler) is cls and all(config.get(k) == v for k, v in overrides.items()):
            return name
    return type(scheduler).__name__


def build_scheduler(name: str, base: SchedulerMixin) -> SchedulerMixin:
    """A new scheduler of kind ``name`` that keeps the model's noise schedule (betas, offsets)."""
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(base.config, **overrides)
