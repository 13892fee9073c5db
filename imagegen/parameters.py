"""Turn a request into the full parameters of its generation: the model's defaults fill the
blank fields, and what depends on the model is checked against it."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from imagegen.errors import InvalidField
from imagegen.inputs import SIDE, Edit, output_size, rounded_down
from imagegen.schemas import (
    MAX_SEED,
    SCHEDULES,
    AdapterInfo,
    ControlParameters,
    ControlRequest,
    GenerationParameters,
    HiresParameters,
    HiresRequest,
    ImageRequest,
    Lora,
    Mode,
    ModelInfo,
)
from models.families import FAMILIES


def choose_model(name: str | None, infos: list[ModelInfo]) -> ModelInfo:
    """The model a request names, as ``name`` or ``name:version``; the first when blank."""
    if name is None:
        return infos[0]
    for info in infos:
        if name in (info.name, info.tag):
            return info
    loaded = ", ".join(info.tag for info in infos)
    raise InvalidField(
        f"`model` must be one of the loaded models ({loaded}), but is {name!r}.", field="model"
    )


def check_family(request: ImageRequest, info: ModelInfo) -> None:
    """Fields the model's family cannot honour are refused, never dropped."""
    label = f"{info.name} ({FAMILIES[info.family].label})"
    if request.scheduler is not None and request.scheduler not in info.schedulers:
        raise InvalidField(
            f"`scheduler` must be one of {', '.join(info.schedulers)} for {label}, "
            f"but is {request.scheduler!r}.",
            field="scheduler",
        )
    scheduler = request.scheduler or info.default_scheduler
    if request.schedule is not None and request.schedule not in SCHEDULES.get(scheduler, ()):
        takes = ", ".join(SCHEDULES.get(scheduler, ())) or "none"
        raise InvalidField(
            f"`schedule` must be one the sampler {scheduler} takes ({takes}), but is "
            f"{request.schedule!r}.",
            field="schedule",
        )
    family = FAMILIES[info.family]
    if (request.clip_skip or 1) > 1 and not family.clip_skip:
        raise InvalidField(
            f"`clip_skip` must be blank or 1 for {label}: its prompt is not read by CLIP "
            f"layers alone, but is {request.clip_skip}.",
            field="clip_skip",
        )
    if request.negative_prompt and info.guidance != "classifier-free":
        raise InvalidField(
            f"`negative_prompt` must be empty for {label}: its guidance is distilled into "
            "the model, which has no negative prompt.",
            field="negative_prompt",
        )
    if request.guidance_scale is not None and info.guidance == "none":
        raise InvalidField(
            f"`guidance_scale` must be left blank for {label}: the model ignores it, but is "
            f"{request.guidance_scale:g}.",
            field="guidance_scale",
        )


def adapters(request: ImageRequest, info: ModelInfo) -> list[Lora]:
    """The request's adapters by ``name:version``: each must be one of the model's."""
    return [
        Lora(
            name=stored_tag(lora.name, info.loras, f"loras[{k}].name", "an adapter", info),
            scale=lora.scale,
        )
        for k, lora in enumerate(request.loras)
    ]


def stored_tag(
    name: str, stored: Sequence[AdapterInfo], field: str, what: str, info: ModelInfo
) -> str:
    """``name`` (``name`` or ``name:version``) as the tag of one of the model's ``stored``
    adapters or ControlNets; else a 400 naming ``field`` (by its list's name)."""
    for item in stored:
        if name in (item.name, item.tag):
            return item.tag
    names = ", ".join(item.tag for item in stored) or "none"
    raise InvalidField(
        f"`{field}` must be {what} of {info.name} (stored: {names}), but is {name!r}.",
        field=field.split("[")[0],
    )


def active_controls(request: ImageRequest) -> list[tuple[int, ControlRequest]]:
    """The request's controls that guide, with their index: one at scale 0 is left out of
    the call (it would add only its cost, and FLUX.1's and SD3's pipelines draw their noise
    differently with a ControlNet than without)."""
    return [(index, c) for index, c in enumerate(request.controlnets) if c.scale > 0]


def controls(
    request: ImageRequest, info: ModelInfo, mode: Mode, digests: list[str]
) -> list[ControlParameters]:
    """The request's controls by ``name:version``; each must be one of the model's, for a
    mode they can guide. ``digests``: the active controls' images' SHA-256."""
    tags = [
        stored_tag(c.name, info.controlnets, f"controlnets[{k}].name", "a ControlNet", info)
        for k, c in enumerate(request.controlnets)
    ]
    active = active_controls(request)
    needed = [mode] + (["image-to-image"] if request.hires is not None else [])
    for wanted in needed if active else []:
        if wanted not in info.control_modes:
            doing = "hires fix's second pass" if wanted != mode else wanted
            raise InvalidField(
                f"`controlnets` cannot guide {doing} for {info.name} (its ControlNets guide "
                f"{', '.join(info.control_modes) or 'nothing'}).",
                field="controlnets",
            )
    return [
        ControlParameters(
            name=tags[index],
            scale=control.scale,
            start=control.start,
            end=control.end,
            module=control.module,
            image_sha256=digest,
        )
        for (index, control), digest in zip(active, digests, strict=True)
    ]


def resolve(
    request: ImageRequest,
    info: ModelInfo,
    count: int = 1,
    edit: Edit | None = None,
    control_digests: list[str] | None = None,
) -> GenerationParameters:
    """The parameters of a request to the model ``info`` (:func:`choose_model`). A drawn
    seed leaves room for ``count`` consecutive seeds. With an ``edit`` (the request's image,
    read), the size is the edit's; ``control_digests`` are its active controls' images'
    SHA-256 (:func:`active_controls`), read at that size."""
    check_family(request, info)
    mode = mode_of(edit)
    if mode not in info.modes:
        field = "mask" if mode == "inpainting" else "image"
        raise InvalidField(
            f"`{field}` asks for {mode}, which {info.name} cannot do (it does "
            f"{', '.join(info.modes)}).",
            field=field,
        )
    parameters = GenerationParameters(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=edit.width if edit else request.width or info.native_width,
        height=edit.height if edit else request.height or info.native_height,
        num_inference_steps=request.num_inference_steps or info.default_steps,
        guidance_scale=(
            info.default_guidance_scale
            if request.guidance_scale is None
            else request.guidance_scale
        ),
        seed=secrets.randbelow(MAX_SEED + 2 - count) if request.seed is None else request.seed,
        scheduler=request.scheduler or info.default_scheduler,
        schedule=request.schedule,
        clip_skip=request.clip_skip or 1,
        model=info.tag,
        mode=mode,
        strength=request.strength if edit else None,
        image_sha256=edit.image_sha256 if edit else None,
        mask_sha256=edit.mask_sha256 if edit else None,
        loras=adapters(request, info),
        cache=info.cache_default if request.cache is None else request.cache,
        controlnets=controls(request, info, mode, control_digests or []),
    )
    if parameters.cache and info.step_cache is None:
        raise InvalidField(f"`cache` is not available for {info.name}.", field="cache")
    if parameters.denoising_steps < 1:
        raise InvalidField(
            f"`strength` x `num_inference_steps` must be at least 1 (the steps an edit runs), "
            f"but is {parameters.strength:g} x {parameters.num_inference_steps}.",
            field="strength",
        )
    if request.hires is not None:
        parameters.hires = hires_of(request.hires, info, parameters)
    return parameters


def hires_of(hires: HiresRequest, info: ModelInfo, first: GenerationParameters) -> HiresParameters:
    """Hires fix's second pass for the first pass ``first``, checked against the model."""
    if hires.upscaler not in info.upscalers:
        raise InvalidField(
            f"`hires.upscaler` must be one of {', '.join(info.upscalers)} for {info.name}, "
            f"but is {hires.upscaler!r}.",
            field="hires.upscaler",
        )
    if hires.width is not None or hires.height is not None:
        width, height = output_size((first.width, first.height), hires.width, hires.height)
    else:
        scale = hires.scale or 2.0
        width, height = rounded_down(first.width * scale), rounded_down(first.height * scale)
    low, high = SIDE
    if not (low <= width <= high and low <= height <= high):
        raise InvalidField(
            f"`hires` must make each side between {low} and {high}, but makes "
            f"{width}x{height} from {first.width}x{first.height}.",
            field="hires",
        )
    scheduler = hires.scheduler or first.scheduler
    if scheduler not in info.schedulers:
        raise InvalidField(
            f"`hires.scheduler` must be one of {', '.join(info.schedulers)} for {info.name}, "
            f"but is {scheduler!r}.",
            field="hires.scheduler",
        )
    if first.schedule is not None and first.schedule not in SCHEDULES.get(scheduler, ()):
        raise InvalidField(
            f"`hires.scheduler` must take the schedule {first.schedule}, but {scheduler} does not.",
            field="hires.scheduler",
        )
    steps = hires.steps or first.num_inference_steps
    if int(steps * hires.strength) < 1:
        raise InvalidField(
            f"`hires.strength` x its steps must be at least 1 (the steps the second pass "
            f"runs), but is {hires.strength:g} x {steps}.",
            field="hires.strength",
        )
    return HiresParameters(
        width=width,
        height=height,
        upscaler=hires.upscaler,
        num_inference_steps=steps,
        strength=hires.strength,
        prompt=hires.prompt or first.prompt,
        negative_prompt=first.negative_prompt
        if hires.negative_prompt is None
        else hires.negative_prompt,
        scheduler=scheduler,
    )


def mode_of(edit: Edit | None) -> Mode:
    if edit is None:
        return "text-to-image"
    return "image-to-image" if edit.mask is None else "inpainting"


def series(parameters: GenerationParameters, count: int) -> list[GenerationParameters]:
    """The parameters of ``count`` images with seeds ``seed``, ``seed + 1``, ..."""
    return [parameters.model_copy(update={"seed": parameters.seed + k}) for k in range(count)]
