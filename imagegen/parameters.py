"""Turn a request into the full parameters of its generation: the model's defaults fill the
blank fields, and what depends on the model is checked against it."""

from __future__ import annotations

import secrets

from .errors import InvalidField
from .schemas import MAX_SEED, GenerationParameters, ImageRequest, ModelInfo


def resolve(request: ImageRequest, info: ModelInfo, count: int = 1) -> GenerationParameters:
    """A drawn seed leaves room for ``count`` consecutive seeds."""
    if request.model not in (None, info.name, info.tag):
        raise InvalidField(
            f"`model` must be one of the loaded models ({info.tag}), but is {request.model!r}.",
            field="model",
        )
    if request.scheduler is not None and request.scheduler not in info.schedulers:
        raise InvalidField(
            f"`scheduler` must be one of {', '.join(info.schedulers)} for {info.name}, "
            f"but is {request.scheduler!r}.",
            field="scheduler",
        )
    return GenerationParameters(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=request.width or info.native_width,
        height=request.height or info.native_height,
        num_inference_steps=request.num_inference_steps or info.default_steps,
        guidance_scale=(
            info.default_guidance_scale
            if request.guidance_scale is None
            else request.guidance_scale
        ),
        seed=secrets.randbelow(MAX_SEED + 2 - count) if request.seed is None else request.seed,
        scheduler=request.scheduler or info.default_scheduler,
        model=info.tag,
    )


def series(parameters: GenerationParameters, count: int) -> list[GenerationParameters]:
    """The parameters of ``count`` images with seeds ``seed``, ``seed + 1``, ..."""
    return [parameters.model_copy(update={"seed": parameters.seed + k}) for k in range(count)]
