"""What a generation costs, in one unit that admission, the wait estimate and the rate limit
share, counted as the generator spends it.

The unit is the **megapixel-step**: one evaluation of the denoiser over one million output
pixels. An image's work is its evaluations times its megapixels, plus a fixed part:

- **evaluations**: the steps it runs (an edit's are ``num_inference_steps * strength``) times
  the scheduler's evaluations per step (Heun's second-order steps evaluate twice), doubled
  when classifier-free guidance is on (``guidance_scale > 1``: the denoiser runs on a batch of
  two);
- **hires fix**: its second pass is an image of its own (image-to-image at the larger size),
  plus the upscaler's work (a network's; a resize or an interpolation is free);
- **ControlNets**: each adds ``CONTROL_WORK`` of an evaluation to every step;
- **fixed**: the VAE decode and the output encode, one evaluation's worth, and an edit's VAE
  encode of its input, half of one (``python -m bench.work``, docs/benchmarks.md, measured
  0.94 and 0.44 on SD 1.5's architecture): what a 1-step image costs beyond its step.

The denoiser's convolutions scale with pixels, so this tracks measured time closely at the
sizes a model is made for; attention grows faster than pixels, so very large images cost
somewhat more than their share, which the measured rate (seconds per unit) absorbs over time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from imagegen.schemas import GenerationParameters
from imagegen.upscalers import upscale_work

# Defaults of IMAGEGEN_MAX_REQUEST_WORK per device. On a GPU, eight guided 1024x1024 images of 50
# steps (847) or one guided 2048x2048 image of 150 steps (1263) fit; on two CPU cores one guided
# 512x512 image of 30 steps (16.0) does.
DEFAULT_BUDGETS = {"cuda": 2000.0, "mps": 200.0, "cpu": 16.0}
# Denoiser evaluations per step, by scheduler; one for the others. The second-order ones
# evaluate twice per step (diffusers' schedule has 2n - 1 timesteps for n steps).
EVALUATIONS_PER_STEP = {"heun": 2, "dpm2": 2, "dpm2_a": 2, "dpm++_sde": 2}
DECODE_WORK = 1.0  # per megapixel of output: the VAE decode and the output encode
EDIT_ENCODE_WORK = 0.5  # per megapixel of an edit's input: its VAE encode
# A ControlNet's share of an evaluation: a copy of the UNet's encoder and middle block, run
# beside it at every step it guides (measured in docs/benchmarks.md, ControlNets).
CONTROL_WORK = 0.5


def evaluation_work(parameters: GenerationParameters) -> float:
    """One evaluation of the denoiser for one image (what one step event stands for), with
    its ControlNets."""
    p = parameters
    guided = 2 if p.guidance_scale > 1 else 1
    controls = 1 + CONTROL_WORK * len(p.controlnets)
    return p.width * p.height * guided * controls / 1e6


def step_work(parameters: GenerationParameters) -> float:
    """One denoising step of one image."""
    return EVALUATIONS_PER_STEP.get(parameters.scheduler, 1) * evaluation_work(parameters)


def fixed_work(parameters: GenerationParameters) -> float:
    """What one image costs beyond its steps: decoding and encoding it, and an edit's input."""
    p = parameters
    per_megapixel = DECODE_WORK + (EDIT_ENCODE_WORK if p.mode != "text-to-image" else 0.0)
    return per_megapixel * p.width * p.height / 1e6


def hires_work(parameters: GenerationParameters) -> float:
    """Hires fix's part of an image: its second pass and the upscaler's (0 without)."""
    second = parameters.second_pass()
    if second is None or parameters.hires is None:
        return 0.0
    return upscale_work(parameters.hires.upscaler, second.width, second.height) + image_work(second)


def image_work(parameters: GenerationParameters) -> float:
    """Megapixel-steps of one image, hires fix's second pass included."""
    p = parameters
    return p.denoising_steps * step_work(p) + fixed_work(p) + hires_work(p)


def work(batch: Sequence[GenerationParameters]) -> float:
    return sum(image_work(parameters) for parameters in batch)


def steps_within(batch: Sequence[GenerationParameters], budget: float) -> int:
    """The most ``num_inference_steps`` a batch like this one fits in ``budget``."""
    fixed = sum(fixed_work(p) + hires_work(p) for p in batch)
    per_step = sum(p.denoising_steps * step_work(p) for p in batch) / batch[0].num_inference_steps
    return max(math.floor((budget - fixed) / per_step), 0)


def default_budget(device: str) -> float:
    return DEFAULT_BUDGETS.get(device.split(":")[0], DEFAULT_BUDGETS["cpu"])
