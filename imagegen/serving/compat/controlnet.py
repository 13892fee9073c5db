"""sd-webui-controlnet's API, the ControlNet extension of AUTOMATIC1111, over the native
`controlnets`: its units in `alwayson_scripts.controlnet.args` of `txt2img` and `img2img`,
and its `/controlnet/*` routes (`version`, `model_list`, `module_list`, `settings`,
`detect`).

Field names, defaults, aliases and quirks are the extension's, from Mikubill/
sd-webui-controlnet at 56cec5b (`internal_controlnet/args.py`, `scripts/api.py`): a unit is
skipped unless `enabled`; `input_image`, `guidance` and `lowvram` are old names of `image`,
`guidance_end` and `low_vram`; `model` may carry a hash in brackets; a threshold or
processing resolution outside its module's range (-1 included) is its default;
`pixel_perfect` draws the map at the size that needs no resampling; an img2img unit without
an image guides by the init image. What this service cannot do is a 422 naming the field:
`control_mode` other than Balanced, a unit `mask`, a module that needs a network.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request

from imagegen.controls import (
    DEFAULT_RESOLUTION,
    MAX_CONTROLS,
    PREPROCESSORS,
    RESOLUTION,
    ResizeMode,
    Setting,
    detect,
)
from imagegen.errors import InvalidField, Unsupported, answers_errors
from imagegen.inputs import WHITE, InputLimits, read_image
from imagegen.schemas import MAX_IMAGES, ModelInfo
from imagegen.serving.encoding import off_the_loop
from imagegen.serving.gateway import Gateway

API_VERSION = 3  # external_code.get_api_version()
UNITS = "alwayson_scripts.controlnet.args"
RESIZE_MODES: dict[str | int, ResizeMode] = {
    "Just Resize": "resize",
    "Crop and Resize": "crop",
    "Resize and Fill": "fill",
    "Inner Fit (Scale to Fit)": "crop",
    "Outer Fit (Shrink to Fit)": "fill",
    "Scale to Fit (Inner Fit)": "crop",
    "Envelope (Outer Fit)": "fill",
    0: "resize",
    1: "crop",
    2: "fill",
}
BALANCED = ("Balanced", 0)
# Old names of fields, as the extension still reads them.
ALIASES = {"guidance": "guidance_end", "lowvram": "low_vram", "input_image": "image"}
MODEL_HASH = re.compile(r"\s*\[[0-9a-fA-F]+\]$")


class ControlNetUnit(BaseModel):
    """One unit of `alwayson_scripts.controlnet.args`; unknown fields are ignored, as the
    extension ignores them."""

    model_config = ConfigDict(extra="ignore")

    enabled: bool = False
    module: str = "none"
    model: str = "None"
    weight: float = Field(1.0, ge=0, le=2)
    image: str | dict[str, Any] | None = None
    mask: str | None = None
    resize_mode: int | str = "Crop and Resize"
    low_vram: bool = False
    processor_res: float = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = Field(0.0, ge=0, le=1)
    guidance_end: float = Field(1.0, ge=0, le=1)
    pixel_perfect: bool = False
    control_mode: int | str = "Balanced"

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        for old, new in ALIASES.items():
            if old in values:
                values.setdefault(new, values.pop(old))
        if "mask_image" in values:  # SD Forge's name
            values.setdefault("mask", values.pop("mask_image"))
        return values


def module_named(name: str, field: str) -> str:
    """A module by its name or its label, as the extension takes either."""
    for key, preprocessor in PREPROCESSORS.items():
        if name.lower() in (key, (preprocessor.label or key).lower()):
            return key
    raise Unsupported(
        f"`{field}` must be one of {', '.join(PREPROCESSORS)} (the preprocessors that need no "
        f"network), but is {name[:64]!r}.",
        field=field,
    )


def in_range(value: float, setting: Setting | None) -> float | None:
    """The extension's rule: a value outside the setting's range is its default (None)."""
    if setting is None or not setting.low <= value <= setting.high:
        return None
    return value


def native_control(
    unit: ControlNetUnit, field: str, info: ModelInfo, init_image: str | None
) -> dict[str, Any]:
    """The native `controlnets` entry of an enabled unit."""
    name = MODEL_HASH.sub("", unit.model)
    if name not in {key for net in info.controlnets for key in (net.name, net.tag)}:
        names = ", ".join(net.name for net in info.controlnets) or "none"
        raise Unsupported(
            f"`{field}.model` must be a ControlNet of {info.name} ({names}), but is "
            f"{unit.model[:200]!r}.",
            field=f"{field}.model",
        )
    if unit.control_mode not in BALANCED:
        raise Unsupported(
            f"`{field}.control_mode` must be Balanced (0) here, but is {unit.control_mode!r}.",
            field=f"{field}.control_mode",
        )
    if unit.resize_mode not in RESIZE_MODES:
        modes = ", ".join(str(mode) for mode in RESIZE_MODES)
        raise Unsupported(
            f"`{field}.resize_mode` must be one of {modes}, but is {unit.resize_mode!r}.",
            field=f"{field}.resize_mode",
        )
    image = unit.image.get("image") if isinstance(unit.image, dict) else unit.image
    mask = unit.image.get("mask") if isinstance(unit.image, dict) else unit.mask
    if mask is not None:
        raise Unsupported(
            f"`{field}.mask` must be left out: no preprocessor here reads a mask.",
            field=f"{field}.mask",
        )
    image = image or init_image
    if not isinstance(image, str):
        raise Unsupported(
            f"`{field}.image` is required: the unit is enabled but gives no image.",
            field=f"{field}.image",
        )
    module = module_named(unit.module, f"{field}.module")
    preprocessor = PREPROCESSORS[module]
    resolution = unit.processor_res if RESOLUTION[0] <= unit.processor_res <= RESOLUTION[1] else 0
    return {
        "name": name,
        "image": image,
        "module": module,
        "threshold_a": in_range(unit.threshold_a, preprocessor.a),
        "threshold_b": in_range(unit.threshold_b, preprocessor.b),
        "processor_res": None if unit.pixel_perfect else int(resolution or DEFAULT_RESOLUTION),
        "resize_mode": RESIZE_MODES[unit.resize_mode],
        "scale": unit.weight,
        "start": unit.guidance_start,
        "end": unit.guidance_end,
    }


def native_controls(
    scripts: dict[str, Any], info: ModelInfo, init_image: str | None = None
) -> list[dict[str, Any]]:
    """The native `controlnets` of A1111's `alwayson_scripts` (the ControlNet extension's,
    by any capitalisation, as A1111 matches script names); any other script is a 422."""
    units: Any = []
    for name, script in scripts.items():
        if name.lower() != "controlnet":
            raise Unsupported(
                f"`alwayson_scripts` may hold only `controlnet` here, but holds {name[:64]!r}.",
                field="alwayson_scripts",
            )
        units = script.get("args", []) if isinstance(script, dict) else None
    if not isinstance(units, list) or not all(isinstance(unit, dict) for unit in units):
        raise Unsupported(f"`{UNITS}` must be a list of ControlNet units (objects).", field=UNITS)
    controls = []
    for index, values in enumerate(units):
        field = f"{UNITS}[{index}]"
        try:
            unit = ControlNetUnit.model_validate(values)
        except ValidationError as error:
            detail = error.errors()[0]
            where = f"{field}.{'.'.join(str(part) for part in detail['loc'])}"
            raise Unsupported(f"`{where}`: {detail['msg']}.", field=where) from None
        if unit.enabled:
            controls.append(native_control(unit, field, info, init_image))
    if len(controls) > MAX_CONTROLS:
        raise Unsupported(
            f"`{UNITS}` must enable at most {MAX_CONTROLS} units, but enables {len(controls)}.",
            field=UNITS,
        )
    return controls


class DetectRequest(BaseModel):
    """Body of `POST /controlnet/detect`: images through a preprocessor, nothing generated."""

    model_config = ConfigDict(extra="ignore")

    controlnet_module: str = Field("none", description="`GET /controlnet/module_list`.")
    controlnet_input_images: list[str] = Field(
        default_factory=list,
        max_length=MAX_IMAGES,
        description=f"Base64 images (PNG, JPEG, WebP), at most {MAX_IMAGES}.",
    )
    controlnet_processor_res: float = Field(
        -1, description=f"The map's shorter side, 64-2048; else {DEFAULT_RESOLUTION}."
    )
    controlnet_threshold_a: float = Field(-1, description="The module's first setting.")
    controlnet_threshold_b: float = Field(-1, description="The module's second setting.")
    controlnet_masks: list[str] = Field(
        default_factory=list, max_length=0, description="Not read by any module here: empty."
    )
    low_vram: bool = False

    @model_validator(mode="before")
    @classmethod
    def _images_by_their_old_name(cls, values: Any) -> Any:
        # `webuiapi` (0.9.17) sends the images as `controlnet_images`.
        if isinstance(values, dict) and "controlnet_images" in values:
            values = {"controlnet_input_images": values["controlnet_images"], **values}
        return values


def detected(body: DetectRequest, limits: InputLimits) -> list[str]:
    """Each image's map, PNG base64 (off the event loop)."""
    module = module_named(body.controlnet_module, "controlnet_module")
    preprocessor = PREPROCESSORS[module]
    res = body.controlnet_processor_res
    resolution = int(res) if RESOLUTION[0] <= res <= RESOLUTION[1] else DEFAULT_RESOLUTION
    maps = []
    for index, text in enumerate(body.controlnet_input_images):
        field = f"controlnet_input_images[{index}]"
        try:
            image, _ = read_image(text, field, limits, WHITE)
        except InvalidField as error:  # A1111's API answers 422
            raise Unsupported(error.message, field=field) from None
        drawn = detect(
            image,
            module,
            in_range(body.controlnet_threshold_a, preprocessor.a),
            in_range(body.controlnet_threshold_b, preprocessor.b),
            resolution,
        )
        buffer = io.BytesIO()
        drawn.save(buffer, format="PNG")
        maps.append(base64.b64encode(buffer.getvalue()).decode())
    return maps


def module_detail(alias_names: bool) -> tuple[list[str], dict[str, Any]]:
    names = {key: (p.label or key) if alias_names else key for key, p in PREPROCESSORS.items()}
    detail = {}
    for key, preprocessor in PREPROCESSORS.items():
        sliders = [
            {"name": s.label, "value": s.default, "min": s.low, "max": s.high, "step": s.step}
            for s in (preprocessor.a, preprocessor.b)
            if s is not None
        ]
        if preprocessor.resolution:
            low, high = RESOLUTION
            resolution = {"name": "Resolution", "value": DEFAULT_RESOLUTION, "min": low}
            sliders.insert(0, {**resolution, "max": high, "step": 8})
        detail[names[key]] = {"model_free": True, "sliders": sliders}
    return list(names.values()), detail


def controlnet_router(gateway: Callable[[], Gateway]) -> APIRouter:
    """The extension's `/controlnet` routes; ``gateway`` gives the serving instance's."""
    router = APIRouter(prefix="/controlnet", tags=["AUTOMATIC1111 API"])

    @router.get("/version")
    async def version() -> dict[str, int]:
        """The extension API's version this layer speaks."""
        return {"version": API_VERSION}

    @router.get("/model_list")
    async def model_list(update: bool = True) -> dict[str, list[str]]:
        """The stored ControlNets of the served models, for a unit's `model`."""
        infos = await gateway().models()
        names = dict.fromkeys(net.name for info in infos for net in info.controlnets)
        return {"model_list": list(names)}

    @router.get("/module_list")
    async def module_list(alias_names: bool = False) -> dict[str, Any]:
        """The preprocessors, for a unit's `module`, with their settings."""
        names, detail = module_detail(alias_names)
        return {"module_list": names, "module_detail": detail}

    @router.get("/settings")
    async def settings() -> dict[str, int]:
        """How many units a request may enable."""
        return {"control_net_unit_count": MAX_CONTROLS}

    @router.post("/detect")
    @answers_errors
    async def detect_maps(body: DetectRequest, request: Request) -> dict[str, Any]:
        """The control maps a module draws of `controlnet_input_images`, base64 PNG, as a
        unit with that module would guide by them."""
        if not body.controlnet_input_images:
            raise Unsupported(
                "`controlnet_input_images` must hold at least one image.",
                field="controlnet_input_images",
            )
        limits = gateway().input_limits
        maps = await off_the_loop(lambda: detected(body, limits))
        return {"images": maps, "info": "Success"}

    return router
