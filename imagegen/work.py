"""What a generation costs, in one unit that admission, the wait estimate and the rate limit
share.

The unit is the **megapixel-step**: one denoising step over one million output pixels. A
request's work is ``images * steps * width * height / 10**6``, doubled when classifier-free
guidance is on (``guidance_scale > 1``), because the denoiser then runs twice per step. An
edit's steps are those it runs, ``num_inference_steps * strength``. The
denoiser's convolutions scale with pixels, so this tracks measured time closely at the sizes a
model is made for; attention grows faster than pixels, so very large images cost somewhat more
than their share, which the measured rate (seconds per unit) absorbs over time.
"""

from __future__ import annotations

from collections.abc import Sequence

from imagegen.schemas import GenerationParameters

# Defaults of IMAGEGEN_MAX_REQUEST_WORK per device. On a GPU, eight guided 1024x1024 images of 50
# steps (840) or one 2048x2048 image of 150 steps (1258) fit; on two CPU cores one guided
# 512x512 image of 30 steps (15.7) does.
DEFAULT_BUDGETS = {"cuda": 2000.0, "mps": 200.0, "cpu": 16.0}


def image_work(parameters: GenerationParameters) -> float:
    """Megapixel-steps of one image."""
    p = parameters
    guided = 2 if p.guidance_scale > 1 else 1
    return p.denoising_steps * p.width * p.height * guided / 1e6


def work(batch: Sequence[GenerationParameters]) -> float:
    return sum(image_work(parameters) for parameters in batch)


def default_budget(device: str) -> float:
    return DEFAULT_BUDGETS.get(device.split(":")[0], DEFAULT_BUDGETS["cpu"])
