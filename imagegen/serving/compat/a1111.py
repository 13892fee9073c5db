"""AUTOMATIC1111's web UI API (`/sdapi/v1`, the subset its clients use) as a thin translator
over the native one: `txt2img` and `img2img` become a native `ImagesRequest` that goes through
the same gateway, queue, batching, limits and keys; the answer has A1111's `images`,
`parameters` and `info` (a JSON string with its infotext fields).

Fields are A1111's. ControlNet units come in `alwayson_scripts.controlnet` as the extension
takes them (:mod:`.controlnet`). A field that asks for a feature this service lacks (face
restoration, tiling, styles, scripts, variation seeds, ...) is accepted only at the value that
turns it off, as A1111 itself would then ignore it; any other value is a 422 naming the field.
Unknown fields are ignored, as A1111's API ignores them. LoRAs are named in the prompt as A1111
does (`<lora:name:0.8>`). `progress`, `interrupt` and `skip` see only the calling key's
A1111 generations on this replica; `options` and `override_settings` follow one rule
(:mod:`.a1111_options`), per key, and never reload a model.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from imagegen import __version__
from imagegen.errors import InvalidField, Unsupported, answers_errors
from imagegen.inputs import inverted_mask
from imagegen.parameters import choose_model
from imagegen.schemas import (
    MAX_CLIP_SKIP,
    MAX_IMAGES,
    MAX_LORAS,
    MAX_PROMPT_CHARS,
    ImagesRequest,
    ModelInfo,
    UpscaleRequest,
)
from imagegen.serving.compat.a1111_options import (
    Held,
    held,
    kept,
    model_hash,
    model_sha256,
    title,
)
from imagegen.serving.compat.controlnet import UNITS, native_controls
from imagegen.serving.encoding import (
    build_answer,
    encode_image,
    encode_upscaled,
    off_the_loop,
)
from imagegen.serving.gateway import Gateway, owner
from imagegen.serving.queue import Ticket
from imagegen.serving.remote import Generated, Upscaled
from imagegen.upscalers import LATENT_UPSCALERS, MAX_OUTPUT_SIDE, MAX_UPSCALE

# A1111's sampler names -> the native scheduler names ("Euler" is also flow matching's), and
# the aliases A1111 also accepts. DPM++ 2S a is diffusers' nearest, the second-order
# single-step DPM++, which is not ancestral.
SAMPLERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "DPM++ 2M": ("dpm++", ("k_dpmpp_2m",)),
    "DPM++ SDE": ("dpm++_sde", ("k_dpmpp_sde",)),
    "DPM++ 2M SDE": ("dpm++_2m_sde", ("k_dpmpp_2m_sde",)),
    "DPM++ 3M SDE": ("dpm++_3m_sde", ("k_dpmpp_3m_sde",)),
    "DPM++ 2S a": ("dpm++_2s", ("k_dpmpp_2s_a",)),
    "Euler a": ("euler_a", ("k_euler_a", "k_euler_ancestral")),
    "Euler": ("euler", ("k_euler",)),
    "LMS": ("lms", ("k_lms",)),
    "Heun": ("heun", ("k_heun",)),
    "DPM2": ("dpm2", ("k_dpm_2",)),
    "DPM2 a": ("dpm2_a", ("k_dpm_2_a",)),
    "DDIM": ("ddim", ()),
    "PLMS": ("pndm", ()),
    "UniPC": ("unipc", ()),
    "LCM": ("lcm", ("k_lcm",)),
    "DDPM": ("ddpm", ()),
}
# Any accepted spelling, lower-cased -> A1111's sampler name.
SAMPLER_OF = {
    name.lower(): sampler
    for sampler, (_, aliases) in SAMPLERS.items()
    for name in (sampler, *aliases)
}
# A1111's schedule types (`scheduler`) -> (label, the native `schedule`; None: the sampler's own).
SCHEDULE_TYPES: dict[str, tuple[str, str | None]] = {
    "automatic": ("Automatic", None),
    "uniform": ("Uniform", "uniform"),
    "normal": ("Normal", "uniform"),  # A1111's Normal spaces timesteps evenly too
    "karras": ("Karras", "karras"),
    "exponential": ("Exponential", "exponential"),
    "sgm_uniform": ("SGM Uniform", "sgm_uniform"),
    "beta": ("Beta", "beta"),
}
# The sampler names from before A1111 1.9 carried the schedule: "DPM++ 2M Karras".
OLD_SUFFIXES = {" karras": "karras", " exponential": "exponential"}
# Native field -> the A1111 field it came from, for error messages.
FIELDS = {
    "num_inference_steps": "steps",
    "guidance_scale": "cfg_scale",
    "scheduler": "sampler_name",
    "schedule": "scheduler",
    "num_images": "batch_size",
    "image": "init_images",
    "strength": "denoising_strength",
    "model": "override_settings.sd_model_checkpoint",
    "loras": "prompt",
    "hires": "enable_hr",
    "hires.scale": "hr_scale",
    "hires.width": "hr_resize_x",
    "hires.height": "hr_resize_y",
    "hires.upscaler": "hr_upscaler",
    "hires.steps": "hr_second_pass_steps",
    "hires.strength": "denoising_strength",
    "hires.prompt": "hr_prompt",
    "hires.negative_prompt": "hr_negative_prompt",
    "hires.scheduler": "hr_sampler_name",
    "controlnets": UNITS,
}
# Features this service lacks, with the values that turn them off (A1111 then ignores them).
# `script_args` are read only by the script named, so they are ignored with none.
OFF: dict[str, tuple[Any, ...]] = {
    "restore_faces": (False, None),
    "tiling": (False, None),
    "styles": ([], None),
    "script_name": (None, "", "None"),
    "subseed_strength": (0, None),
    "seed_resize_from_h": (0, -1, None),
    "seed_resize_from_w": (0, -1, None),
    "refiner_checkpoint": (None, "", "None"),
    "resize_mode": (0, None),
    "include_init_images": (False, None),
    "initial_noise_multiplier": (1, None),
}
A1111_PREFIX = "/sdapi/v1/"
# `<lora:name>`, `<lora:name:scale>` or `<lora:name:scale:...>`. No part may hold `<`, so a
# failed match never reaches past the next tag's start: linear in the prompt's length.
LORA_TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?(?::[^<>]*)?>")
# A prompt's tags are removed before the native length limit applies; room for the most a
# request may apply, each of bounded length (a name at most 200 characters).
MAX_TAGGED_PROMPT_CHARS = MAX_PROMPT_CHARS + MAX_LORAS * 256


class Txt2Img(BaseModel):
    """Body of `POST /sdapi/v1/txt2img`: A1111's fields (more are ignored, as A1111 does)."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(
        "",
        max_length=MAX_TAGGED_PROMPT_CHARS,
        description=f"What to draw, with `<lora:name:scale>` tags (at most {MAX_LORAS}).",
    )
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    seed: int = Field(-1, description="-1 for random.")
    steps: int | None = Field(None, description="Blank: the model's default.")
    cfg_scale: float | None = Field(None, description="Blank: the model's default.")
    width: int | None = Field(None, description="Blank: the model's native size.")
    height: int | None = None
    sampler_name: str | None = Field(None, max_length=64, description="`GET /sdapi/v1/samplers`.")
    sampler_index: str | None = Field(
        None, max_length=64, description="Deprecated alias of `sampler_name`."
    )
    scheduler: str | None = Field(
        None, max_length=64, description="Schedule type: `GET /sdapi/v1/schedulers`."
    )
    clip_skip: int | None = Field(
        None, ge=1, le=MAX_CLIP_SKIP, description="SD.Next's; as `CLIP_stop_at_last_layers`."
    )
    batch_size: int = Field(1, ge=1, le=MAX_IMAGES)
    n_iter: int = Field(1, ge=1, le=MAX_IMAGES)
    override_settings: dict[str, Any] = Field(
        default_factory=dict, description="As `POST /sdapi/v1/options`, for this request."
    )
    override_settings_restore_afterwards: bool = True
    disable_extra_networks: bool = Field(False, description="Ignore `<lora:...>` tags.")
    send_images: bool = True
    denoising_strength: float = Field(
        0.75, description="img2img's strength, or hires fix's second pass's."
    )
    enable_hr: bool = Field(False, description="Hires fix: a second pass at a larger size.")
    hr_scale: float = Field(2.0, description="Hires fix's size, times the first pass's.")
    hr_resize_x: int = Field(0, ge=0, description="Its width instead of `hr_scale` (0: unset).")
    hr_resize_y: int = Field(0, ge=0, description="Its height instead of `hr_scale` (0: unset).")
    hr_upscaler: str | None = Field(
        None, max_length=200, description="`GET /sdapi/v1/upscalers`, `latent-upscale-modes`."
    )
    hr_second_pass_steps: int = Field(0, ge=0, description="0: the first pass's `steps`.")
    hr_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="Blank: `prompt`.")
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    hr_sampler_name: str | None = Field(None, max_length=64, description="Blank: the first's.")
    alwayson_scripts: dict[str, Any] | None = Field(
        None,
        description='Only `controlnet`, the ControlNet extension\'s: `{"args": [unit, ...]}`, '
        "`GET /controlnet/module_list` and `model_list` list what a unit may name.",
    )


class Img2Img(Txt2Img):
    """Body of `POST /sdapi/v1/img2img`."""

    init_images: list[str] = Field(min_length=1, max_length=1, description="One image, base64.")
    mask: str | None = Field(None, description="White is repainted, base64.")
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1: black is repainted.")


def a1111_field(name: str | None) -> str | None:
    """The A1111 field a native one (`hires.upscaler`, or within it) came from."""
    if name is None:
        return None
    return FIELDS.get(name) or FIELDS.get(re.split(r"[.\[]", name)[0], name)


def schedule_of(name: str | None) -> str | None:
    """The native schedule for A1111's schedule type, by name or label."""
    if name is None:
        return None
    for key, (label, native) in SCHEDULE_TYPES.items():
        if name.lower() in (key, label.lower()):
            return native
    names = ", ".join(SCHEDULE_TYPES)
    raise Unsupported(f"`scheduler` must be one of {names}, but is {name!r}.", field="scheduler")


def sampling_of(body: Txt2Img, info: ModelInfo) -> tuple[str | None, str | None]:
    """The native scheduler and schedule for A1111's sampler and schedule names."""
    sampler = body.sampler_name or body.sampler_index
    schedule = schedule_of(body.scheduler)
    if sampler is None:
        return None, schedule
    native, old = sampler_of(sampler, info, "sampler_name")
    return native, old or schedule


def sampler_of(sampler: str, info: ModelInfo, field: str) -> tuple[str, str | None]:
    """The native scheduler for A1111's sampler name, and the schedule an old name (before
    A1111 1.9: "DPM++ 2M Karras") carries."""
    schedule = None
    named = sampler
    for suffix, old in OLD_SUFFIXES.items():
        if named.lower().endswith(suffix) and named.lower() not in SAMPLER_OF:
            named, schedule = named[: -len(suffix)], old
    found = SAMPLER_OF.get(named.lower())
    native = SAMPLERS[found][0] if found else None
    if native == "euler" and info.schedulers == ["flow_match_euler"]:
        native = "flow_match_euler"
    if native is None or native not in info.schedulers:
        names = ", ".join(samplers_of(info))
        raise Unsupported(
            f"`{field}` must be one of {names} for {info.name}, but is {sampler!r}.",
            field=field,
        )
    return native, schedule


def samplers_of(info: ModelInfo) -> list[str]:
    flow = info.schedulers == ["flow_match_euler"]
    return [
        name
        for name, (native, _) in SAMPLERS.items()
        if native in info.schedulers or (flow and native == "euler")
    ]


def check_off(body: BaseModel, off_values: dict[str, tuple[Any, ...]] = OFF) -> None:
    """Features this service lacks must be sent off, or not at all."""
    sent = {**body.model_dump(), **(body.model_extra or {})}
    for name, off in off_values.items():
        if name in sent and sent[name] not in off:
            raise Unsupported(
                f"`{name}` is not supported here: it must be {off[0]!r} (off), but is "
                f"{sent[name]!r}.",
                field=name,
            )


def native_fields(body: Txt2Img, info: ModelInfo, settings: Held) -> dict[str, Any]:
    """The native request's fields for an A1111 body, to the model ``info``, under the
    key's and the request's held ``settings``."""
    check_off(body)
    loras = [] if body.disable_extra_networks else lora_tags(body.prompt)
    scheduler, schedule = sampling_of(body, info)
    fields: dict[str, Any] = {
        "prompt": LORA_TAG.sub("", body.prompt).strip(),
        "negative_prompt": body.negative_prompt,
        "seed": body.seed if body.seed >= 0 else None,
        "num_inference_steps": body.steps,
        "guidance_scale": body.cfg_scale,
        "width": body.width,
        "height": body.height,
        "scheduler": scheduler,
        "schedule": schedule,
        "clip_skip": settings.clip_skip,
        "num_images": body.batch_size * body.n_iter,
        "model": info.tag,
        "loras": loras,
    }
    init_image = None
    if isinstance(body, Img2Img):
        init_image = body.init_images[0]
        fields.update(image=init_image, strength=body.denoising_strength, mask=body.mask)
    fields["controlnets"] = native_controls(body.alwayson_scripts or {}, info, init_image)
    if body.enable_hr:
        fields["hires"] = hires_fields(body, info)
    return fields


def hires_fields(body: Txt2Img, info: ModelInfo) -> dict[str, Any]:
    """The native `hires` for A1111's `hr_*` fields."""
    sampler = body.hr_sampler_name
    same = sampler is None or sampler.lower() in ("", "use same sampler")
    size: dict[str, Any] = {
        "width": body.hr_resize_x or None,
        "height": body.hr_resize_y or None,
    }
    if not (body.hr_resize_x or body.hr_resize_y):
        size = {"scale": body.hr_scale}
    return {
        **size,
        "upscaler": body.hr_upscaler or "Latent",
        "steps": body.hr_second_pass_steps or None,
        "strength": body.denoising_strength,
        "prompt": body.hr_prompt or None,
        "negative_prompt": body.hr_negative_prompt or None,
        "scheduler": None if same else sampler_of(str(sampler), info, "hr_sampler_name")[0],
    }


def lora_tags(prompt: str) -> list[dict[str, Any]]:
    """The LoRAs a prompt names with A1111's tags; a scale that is no number is a 422."""
    loras = []
    for name, scale in LORA_TAG.findall(prompt):
        try:
            loras.append({"name": name, "scale": float(scale) if scale else 1.0})
        except ValueError:
            raise Unsupported(
                f"`prompt`'s tag `<lora:{name[:64]}:...>` must give a number as its scale, but "
                f"gives {scale[:32]!r}.",
                field="prompt",
            ) from None
    return loras


def infotext(p: Any, info: ModelInfo, sampler: str, strength: float | None) -> str:
    """The parameters line A1111 writes under an image."""
    line = [
        f"Steps: {p.num_inference_steps}",
        f"Sampler: {sampler}",
        f"CFG scale: {p.guidance_scale:g}",
        f"Seed: {p.seed}",
        f"Size: {p.width}x{p.height}",
        f"Model hash: {model_hash(info)}",
        f"Model: {info.name}",
    ]
    if strength is not None:
        line.append(f"Denoising strength: {strength:g}")
    if p.hires is not None:
        line += [
            f"Hires resize: {p.hires.width}x{p.hires.height}",
            f"Hires steps: {p.hires.num_inference_steps}",
            f"Hires upscaler: {p.hires.upscaler}",
        ]
    if p.loras:
        line.append(
            "Lora weights: " + ", ".join(f"{lora.name}: {lora.scale:g}" for lora in p.loras)
        )
    line += [  # as the extension writes its units
        f'ControlNet {k}: "Module: {c.module}, Model: {c.name}, Weight: {c.scale:g}, '
        f'Guidance Start: {c.start:g}, Guidance End: {c.end:g}"'
        for k, c in enumerate(p.controlnets)
    ]
    line.append(f"Version: imagegen {__version__}")
    negative = f"\nNegative prompt: {p.negative_prompt}" if p.negative_prompt else ""
    return f"{p.prompt}{negative}\n{', '.join(line)}"


def answer(
    body: Txt2Img, generated: Generated | None, info: ModelInfo, settings: Held
) -> dict[str, Any]:
    """A1111's answer; an interrupted request has no images, as A1111's then has none."""
    generations = generated.generations if generated else []
    sampler = body.sampler_name or body.sampler_index or "Automatic"
    strength = body.denoising_strength if isinstance(body, Img2Img) or body.enable_hr else None
    texts = [infotext(g.parameters, info, sampler, strength) for g in generations]
    seeds = [g.parameters.seed for g in generations]
    first = generations[0].parameters if generations else None
    details = {
        "prompt": first.prompt if first else body.prompt,
        "all_prompts": [g.parameters.prompt for g in generations],
        "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [g.parameters.negative_prompt for g in generations],
        "seed": seeds[0] if seeds else body.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0,
        "width": first.width if first else body.width,
        "height": first.height if first else body.height,
        "sampler_name": sampler,
        "cfg_scale": first.guidance_scale if first else body.cfg_scale,
        "steps": first.num_inference_steps if first else body.steps,
        "batch_size": body.batch_size,
        "restore_faces": False,
        "sd_model_name": info.name,
        "sd_model_hash": model_hash(info),
        "denoising_strength": strength,
        "styles": [],
        "clip_skip": settings.clip_skip or 1,
        "is_using_inpainting_conditioning": info.pipeline.endswith("InpaintPipeline"),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "index_of_first_image": 0,
        "infotexts": texts,
        "version": f"imagegen {__version__}",
    }
    images = [
        base64.b64encode(encode_image(g.image, g.parameters, "png", 90)).decode()
        for g in generations
        if body.send_images
    ]
    parameters = body.model_dump(exclude={"init_images", "mask"})
    return {"images": images, "parameters": parameters, "info": json.dumps(details)}


@dataclass
class Running:
    """One A1111 generation of a key, as `progress` and `interrupt` see it."""

    ticket: Ticket
    job: str  # txt2img or img2img
    started: float = field(default_factory=time.time)


class A1111:
    """The layer's state on one replica: each key's running generations and default model."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.running: dict[str, list[Running]] = {}
        self.settings: dict[str, dict[str, Any]] = {}  # key -> the settings it set

    async def settings_for(self, key: str, body: Txt2Img | None = None) -> Held:
        """The key's settings, then the request's `override_settings` and `clip_skip`."""
        infos = await self.gateway.models()
        own = held(self.settings.get(key, {}), infos)
        if body is None:
            return own
        override = held(body.override_settings, infos, "override_settings.")
        if not body.override_settings_restore_afterwards:  # A1111 then keeps them
            self.settings[key] = kept(self.settings.get(key, {}), body.override_settings)
        return Held(
            model=override.model or own.model,
            clip_skip=override.clip_skip or body.clip_skip or own.clip_skip,
            vae=override.vae or own.vae,
        )

    async def generate(self, body: Txt2Img, request: Request) -> JSONResponse:
        key = owner(request)
        settings = await self.settings_for(key, body)
        info = choose_model(settings.model, await self.gateway.models())
        try:
            native = ImagesRequest.model_validate(native_fields(body, info, settings))
            if isinstance(body, Img2Img) and body.inpainting_mask_invert and native.mask:
                limits, mask = self.gateway.input_limits, native.mask
                inverted = await off_the_loop(lambda: inverted_mask(mask, "mask", limits))
                native = native.model_copy(update={"mask": inverted})
            ticket = await self.gateway.admit(native, request)
        except ValidationError as error:
            name = ".".join(str(part) for part in error.errors()[0]["loc"])
            raise Unsupported(error.errors()[0]["msg"], field=a1111_field(name)) from None
        except InvalidField as error:
            raise Unsupported(error.message, field=a1111_field(error.field)) from None
        run = Running(ticket, "img2img" if isinstance(body, Img2Img) else "txt2img")
        self.running.setdefault(key, []).append(run)
        generated: Generated | None
        try:
            generated = await self.gateway.wait(ticket, request, listener=observed)
        except asyncio.CancelledError:
            if not ticket.interrupted:
                raise
            generated = None
        finally:
            self.running[key].remove(run)
        return await build_answer(
            request.scope, generated, lambda: JSONResponse(answer(body, generated, info, settings))
        )

    async def upscalers(self) -> list[dict[str, Any]]:
        """A1111's upscaler list: the pixel ones and the stored networks."""
        return [
            {
                "name": info.name,
                "model_name": info.name if info.kind == "model" else None,
                "model_path": None,
                "model_url": None,
                "scale": info.scale or 1,
            }
            for info in await self.gateway.upscalers()
            if info.kind != "latent"
        ]

    async def extras(self, body: ExtrasSingle, images: list[str], request: Request) -> list[str]:
        """Each image upscaled as extras asks, one after another, base64 PNG."""
        made = []
        for image in images:
            native = upscale_request(body, image)
            try:
                upscaled = await self.gateway.upscale(native, request)
            except InvalidField as error:
                field = {"image": "image", "scale": "upscaling_resize", "upscaler": "upscaler_1"}
                named = field.get(error.field or "", "upscaling_resize_w")
                raise Unsupported(error.message, field=named) from None
            made.append(await off_the_loop(partial(png_base64, upscaled, native)))
        return made

    def interrupt(self, key: str) -> None:
        """Stop the key's A1111 generations (`skip` too: a request's images are one call)."""
        for run in self.running.get(key, []):
            run.ticket.interrupt()

    def progress(self, key: str) -> dict[str, Any]:
        runs = self.running.get(key) or []
        run = runs[0] if runs else None
        ticket = run.ticket if run else None
        return {
            "progress": ticket.fraction if ticket else 0.0,
            "eta_relative": (ticket.eta_s or 0.0) if ticket else 0.0,
            "state": {
                "skipped": False,
                "interrupted": bool(ticket and ticket.interrupted),
                "job": run.job if run else "",
                "job_count": len(runs),
                "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(run.started))
                if run
                else "0",
                "job_no": 0,
                "sampling_step": ticket.step if ticket else 0,
                "sampling_steps": ticket.steps if ticket else 0,
            },
            "current_image": ticket.preview if ticket else None,
            "textinfo": None,
        }

    async def options(self, key: str) -> dict[str, Any]:
        """What the key set, with the held settings as they are in effect."""
        own = await self.settings_for(key)
        info = choose_model(own.model, await self.gateway.models())
        return {
            "samples_format": "png",
            **self.settings.get(key, {}),
            "sd_model_checkpoint": title(info),
            "sd_checkpoint_hash": model_hash(info),
            "CLIP_stop_at_last_layers": own.clip_skip or 1,
            "sd_vae": own.vae or "Automatic",
        }

    async def set_options(self, settings: dict[str, Any], key: str) -> None:
        """Checked as a whole before any is kept: a 422 changes nothing."""
        held(settings, await self.gateway.models())
        self.settings[key] = kept(self.settings.get(key, {}), settings)

    async def sd_models(self) -> list[dict[str, Any]]:
        return [
            {
                "title": title(info),
                "model_name": info.name,
                "hash": model_hash(info),
                "sha256": model_sha256(info),
                "filename": info.tag,
                "config": None,
            }
            for info in await self.gateway.models()
        ]

    async def samplers(self, key: str) -> list[dict[str, Any]]:
        info = choose_model((await self.settings_for(key)).model, await self.gateway.models())
        return [
            {"name": name, "aliases": list(SAMPLERS[name][1]), "options": {}}
            for name in samplers_of(info)
        ]

    async def loras(self) -> list[dict[str, Any]]:
        return [
            {
                "name": lora.name,
                "alias": lora.name,
                "path": lora.tag,
                "metadata": {"base": info.name},
            }
            for info in await self.gateway.models()
            for lora in info.loras
        ]


SCHEDULER_LIST = [
    {"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
    for name, (label, _) in SCHEDULE_TYPES.items()
]
# Extras' features beyond upscaling, with the values that turn them off.
EXTRAS_OFF: dict[str, tuple[Any, ...]] = {
    "gfpgan_visibility": (0, None),
    "codeformer_visibility": (0, None),
    "extras_upscaler_2_visibility": (0, None),
}


class ExtrasSingle(BaseModel):
    """Body of `POST /sdapi/v1/extra-single-image`: A1111's upscaling fields (more are
    ignored, as A1111 does)."""

    model_config = ConfigDict(extra="allow")

    image: str = Field(description="The image, base64.")
    resize_mode: int = Field(
        0, ge=0, le=1, description="0: by `upscaling_resize`; 1: to `upscaling_resize_w/h`."
    )
    upscaling_resize: float = Field(2, ge=1, le=MAX_UPSCALE, allow_inf_nan=False)
    upscaling_resize_w: int = Field(512, ge=1, le=MAX_OUTPUT_SIDE)
    upscaling_resize_h: int = Field(512, ge=1, le=MAX_OUTPUT_SIDE)
    upscaling_crop: bool = Field(True, description="With resize mode 1: fill, cut the overflow.")
    upscaler_1: str = Field("None", max_length=200, description="`GET /sdapi/v1/upscalers`.")


class ExtrasBatchImage(BaseModel):
    data: str = Field(description="The image, base64.")
    name: str = Field("", max_length=256)


class ExtrasBatch(ExtrasSingle):
    """Body of `POST /sdapi/v1/extra-batch-images`: the fields of `extra-single-image` for
    each image of `imageList`."""

    image: str = ""
    imageList: list[ExtrasBatchImage] = Field(
        min_length=1, max_length=MAX_IMAGES, description=f"At most {MAX_IMAGES} images."
    )


def png_base64(upscaled: Upscaled, request: UpscaleRequest) -> str:
    return base64.b64encode(encode_upscaled(upscaled, request)).decode()


def upscale_request(body: ExtrasSingle, image: str) -> UpscaleRequest:
    """The native `/upscale` request for A1111's extras fields."""
    check_off(body, EXTRAS_OFF)
    size: dict[str, Any] = {"scale": body.upscaling_resize}
    if body.resize_mode == 1:
        size = {
            "width": body.upscaling_resize_w,
            "height": body.upscaling_resize_h,
            "crop": body.upscaling_crop,
        }
    try:
        return UpscaleRequest(image=image, upscaler=body.upscaler_1, **size)
    except ValidationError as error:
        raise Unsupported(error.errors()[0]["msg"], field="upscaler_1") from None


async def observed(ticket: Ticket, event: Any) -> None:
    """Listening makes a ticket report its steps, which it records itself (with its
    preview) for `progress`; nothing else to do here."""


def a1111_router(layer: Callable[[], A1111]) -> APIRouter:
    """The `/sdapi/v1` routes; ``layer`` gives the serving instance's :class:`A1111`."""
    router = APIRouter(prefix=A1111_PREFIX.rstrip("/"), tags=["AUTOMATIC1111 API"])

    @router.post("/txt2img")
    @answers_errors
    async def txt2img(body: Txt2Img, request: Request) -> JSONResponse:
        """Text to image: `images` (base64 PNG), `parameters`, `info` (a JSON string)."""
        return await layer().generate(body, request)

    @router.post("/img2img")
    @answers_errors
    async def img2img(body: Img2Img, request: Request) -> JSONResponse:
        """Image to image, and inpainting with `mask`."""
        return await layer().generate(body, request)

    @router.get("/progress")
    async def progress(request: Request) -> dict[str, Any]:
        """The calling key's running generation: fraction, ETA, steps, a preview image."""
        return layer().progress(owner(request))

    @router.post("/interrupt")
    async def interrupt(request: Request) -> dict[str, Any]:
        """Stop the calling key's generations (never another key's)."""
        layer().interrupt(owner(request))
        return {}

    @router.post("/skip")
    async def skip(request: Request) -> dict[str, Any]:
        """As `interrupt`: a request's images are made in one call, so there is no next."""
        layer().interrupt(owner(request))
        return {}

    @router.get("/options")
    async def get_options(request: Request) -> dict[str, Any]:
        """The calling key's settings: the held ones as in effect, the others as set."""
        return await layer().options(owner(request))

    @router.post("/options")
    @answers_errors
    async def set_options(body: dict[str, Any], request: Request) -> dict[str, Any]:
        """Settings for the calling key from now on (never a reload): `sd_model_checkpoint`,
        `CLIP_stop_at_last_layers` and `sd_vae` are applied; A1111's settings that change
        the image are a 422 unless at A1111's default; the rest (saving, grids, UI) are kept
        and ignored. docs/compatibility.md has the table."""
        await layer().set_options(body, owner(request))
        return {}

    @router.get("/sd-models")
    async def sd_models() -> list[dict[str, Any]]:
        return await layer().sd_models()

    @router.post("/refresh-checkpoints")
    async def refresh_checkpoints() -> None:
        """Nothing to refresh: the models are loaded at start-up."""

    @router.post("/refresh-vae")
    async def refresh_vae() -> None:
        """Nothing to refresh: each model decodes with its own VAE."""

    @router.post("/refresh-loras")
    async def refresh_loras() -> None:
        """Nothing to refresh: the adapters are read from the model store at start-up."""

    @router.get("/samplers")
    async def samplers(request: Request) -> list[dict[str, Any]]:
        """The samplers the calling key's default model accepts."""
        return await layer().samplers(owner(request))

    @router.get("/schedulers")
    async def schedulers() -> list[dict[str, Any]]:
        """A1111's schedule types this service has (`scheduler` in txt2img)."""
        return SCHEDULER_LIST

    @router.get("/upscalers")
    async def upscalers() -> list[dict[str, Any]]:
        """Hires fix's and extras' upscalers: `None`, `Lanczos`, `Nearest` and the stored
        upscaling networks."""
        return await layer().upscalers()

    @router.get("/latent-upscale-modes")
    async def latent_upscale_modes() -> list[dict[str, Any]]:
        """Hires fix's latent upscalers (`hr_upscaler`)."""
        return [{"name": name} for name in LATENT_UPSCALERS]

    @router.post("/extra-single-image")
    @answers_errors
    async def extra_single_image(body: ExtrasSingle, request: Request) -> dict[str, Any]:
        """Upscale one image: `image` (base64 PNG), `html_info`."""
        (image,) = await layer().extras(body, [body.image], request)
        return {"html_info": "", "image": image}

    @router.post("/extra-batch-images")
    @answers_errors
    async def extra_batch_images(body: ExtrasBatch, request: Request) -> dict[str, Any]:
        """Upscale each image of `imageList`: `images` (base64 PNGs), `html_info`."""
        images = await layer().extras(body, [item.data for item in body.imageList], request)
        return {"html_info": "", "images": images}

    @router.get("/sd-vae")
    async def sd_vae() -> list[dict[str, Any]]:
        """No separate VAE files: each model decodes with its own (`sd_vae`: `Automatic`)."""
        return []

    @router.get("/sd-modules")
    async def sd_modules() -> list[dict[str, Any]]:
        """No separate text encoder or VAE modules: each model is served whole."""
        return []

    @router.post("/unload-checkpoint")
    async def unload_checkpoint() -> dict[str, Any]:
        """Keeps the models loaded: they are shared by every client and loaded once, so an
        unload would make the next request of every key wait for a reload. To free the
        accelerator, stop the service (docs/compatibility.md)."""
        return {}

    @router.post("/reload-checkpoint")
    async def reload_checkpoint() -> dict[str, Any]:
        """The models are loaded already (see `unload-checkpoint`)."""
        return {}

    @router.get("/loras")
    async def loras() -> list[dict[str, Any]]:
        return await layer().loras()

    @router.get("/scripts")
    async def scripts() -> dict[str, list[str]]:
        """No scripts or extensions."""
        return {"txt2img": [], "img2img": []}

    return router
