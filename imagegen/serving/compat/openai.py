"""OpenAI's Images API (`/v1`) as a thin translator over the native one: a request becomes a
native `ImagesRequest` (or, for `response_format: url`, a job), and goes through the same
gateway, queue, batching, limits and auth as `/generate/images`; the answer and the errors
come back in OpenAI's shapes, so its SDK and the chat front-ends that speak it work unchanged.

Mapped: `prompt`, `model` (OpenAI's own names, `dall-e-*` and `gpt-image-*`, reach the
default model or the one `IMAGEGEN_OPENAI_MODELS` maps them to), `n` (num_images), `size`
(`WxH`, or `auto` for the model's native size), `output_format`, `output_compression` (the
encoder's quality), `quality` (denoising steps: `low` half the model's default, `high`/`hd`
twice it, others the default), `response_format` (blank: what OpenAI answers for the name,
`url` for `dall-e-*`, `b64_json` otherwise; `gpt-image-*` always `b64_json`). A `url` is a
signed link that expires with the job (:mod:`imagegen.serving.jobs.links`). Accepted and
ignored as OpenAI does for models that lack them: `style`, `moderation`, `user`, `background`
`auto`/`opaque`; `background: transparent` is refused (no served model draws alpha).
Extensions (the SDK's `extra_body`): `negative_prompt`, `seed`, `num_inference_steps`,
`guidance_scale`, `scheduler`, `schedule`, `clip_skip`, `loras`.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Literal, cast

import anyio.to_thread
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imagegen.errors import (
    Cancelled,
    Forbidden,
    GenerationFailed,
    InvalidField,
    ServiceError,
    TimedOut,
    answers_errors,
)
from imagegen.inputs import InputLimits, decoded, opened, pack
from imagegen.parameters import choose_model
from imagegen.schemas import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    ImagesRequest,
    JobRequest,
    Lora,
    ModelInfo,
    OutputFormat,
    ScheduleName,
    SchedulerName,
)
from imagegen.serving.encoding import (
    build_answer,
    encode_image,
    image_response,
    off_the_loop,
)
from imagegen.serving.gateway import Gateway, owner
from imagegen.serving.jobs.links import EXTENSIONS
from imagegen.serving.lifetime import while_requested
from imagegen.serving.remote import Generated
from middleware.paths import SIGNED_LINKS

EDITS_PATH = "/v1/images/edits"
# OpenAI's image model names, which its clients send as they are.
OPENAI_MODELS = re.compile(r"^(dall-e-[23]|gpt-image-[0-9a-z.-]+)$")
# Native field -> the OpenAI parameter a client sent it as.
PARAMS = {"num_images": "n", "width": "size", "height": "size", "quality": "output_compression"}
MAX_STEPS = 150


class OpenAIImageRequest(BaseModel):
    """Body of `POST /v1/images/generations` (and the form of `/v1/images/edits`)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw.")
    model: str | None = Field(
        None,
        max_length=200,
        description="A loaded model's name; blank: the default. OpenAI's names (`dall-e-3`, "
        "`gpt-image-1`, ...) reach the default model or the one `IMAGEGEN_OPENAI_MODELS` maps.",
    )
    n: int = Field(1, ge=1, le=MAX_IMAGES, description="How many images.")
    size: str | None = Field(
        None,
        pattern=r"^(auto|[0-9]{1,5}x[0-9]{1,5})$",
        description="`WxH` (multiples of 8, 64..2048) or `auto`: the model's native size.",
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        None,
        description="`b64_json`, or `url`: a signed link that downloads without a key until the "
        "job expires (`IMAGEGEN_JOB_TTL`). Blank: `url` for `dall-e-*` models, as OpenAI; "
        "`b64_json` otherwise. `gpt-image-*` always answers `b64_json`, as OpenAI.",
    )
    output_format: OutputFormat | None = Field(None, description="png (default), jpeg, webp.")
    output_compression: int | None = Field(
        None, ge=0, le=100, description="Encoder quality for jpeg and webp."
    )
    quality: Literal["auto", "low", "medium", "high", "standard", "hd"] | None = Field(
        None, description="Steps: `low` half the model's default, `high`/`hd` twice it."
    )
    background: Literal["auto", "opaque", "transparent"] | None = Field(
        None, description="`transparent` is refused: no served model draws alpha."
    )
    style: Literal["vivid", "natural"] | None = Field(None, description="Ignored (DALL-E 3's).")
    moderation: Literal["auto", "low"] | None = Field(None, description="Ignored.")
    user: str | None = Field(None, max_length=256, description="Ignored.")
    # Extensions: the native fields OpenAI's API lacks.
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    scheduler: SchedulerName | None = None
    schedule: ScheduleName | None = None
    clip_skip: int | None = None
    loras: list[Lora] | None = None


def param_of(error: ServiceError | ValidationError) -> str | None:
    """The OpenAI parameter an error is about."""
    if isinstance(error, ValidationError):
        loc = error.errors()[0]["loc"]
        field = str(loc[0]) if loc else None
    else:
        field = error.field
    return PARAMS.get(field, field) if field else None


def native_fields(body: OpenAIImageRequest, info: ModelInfo) -> dict[str, Any]:
    """The native request's fields for ``body``, to the model ``info``."""
    if body.background == "transparent":
        raise InvalidField(
            "`background` must be `auto` or `opaque`: no served model draws transparency, "
            "but is 'transparent'.",
            field="background",
        )
    extensions = (
        "negative_prompt",
        "seed",
        "num_inference_steps",
        "guidance_scale",
        "schedule",
        "clip_skip",
    )
    fields: dict[str, Any] = {
        "prompt": body.prompt,
        "model": info.tag,
        "num_images": body.n,
        "output_format": body.output_format or "png",
        "scheduler": body.scheduler,
        "loras": body.loras or [],
        **{name: getattr(body, name) for name in extensions if getattr(body, name) is not None},
    }
    if body.output_compression is not None:
        fields["quality"] = max(1, body.output_compression)
    if body.size not in (None, "auto"):
        width, _, height = body.size.partition("x")
        fields["width"], fields["height"] = int(width), int(height)
    if body.quality in ("low", "high", "hd") and body.num_inference_steps is None:
        factor = 0.5 if body.quality == "low" else 2
        fields["num_inference_steps"] = min(MAX_STEPS, max(1, round(info.default_steps * factor)))
    return fields


def created(
    generations: list[tuple[str, str]], body: OpenAIImageRequest, size: tuple[int, int]
) -> JSONResponse:
    """OpenAI's answer: ``generations`` are (key, value) pairs, `b64_json` or `url`."""
    return JSONResponse(
        {
            "created": int(time.time()),
            "data": [{key: value, "revised_prompt": body.prompt} for key, value in generations],
            "background": "opaque",
            "output_format": body.output_format or "png",
            "quality": body.quality or "auto",
            "size": f"{size[0]}x{size[1]}",
        }
    )


async def generate(
    gateway: Gateway, body: OpenAIImageRequest, request: Request, edit: dict[str, str]
) -> JSONResponse:
    """`/v1/images/generations` and, with ``edit`` (native `image`, `mask`), `/edits`."""
    info = choose_model(
        model_for(body.model, gateway.settings.openai_model_map), await gateway.models()
    )
    fields = {**native_fields(body, info), **edit}
    url = answers_urls(body)
    try:
        native = (JobRequest if url else ImagesRequest).model_validate(fields)
    except ValidationError as error:
        raise InvalidField(error.errors()[0]["msg"], field=param_of(error)) from None
    if not isinstance(native, JobRequest):
        generated = await gateway.generate(native, request)
        return await build_answer(
            request.scope,
            generated,
            lambda: created(b64_images(generated, native), body, size_of(generated)),
        )
    job = await gateway.start_job(native, request)
    try:
        await while_requested(gateway.jobs.ended(job.id), gateway.settings.timeout, request)
    except (Cancelled, TimedOut):  # nobody waits for its URLs any more
        await gateway.jobs.cancel(owner(request), job.id, "its OpenAI client left")
        raise
    ended = await gateway.jobs.find(owner(request), job.id)
    if ended.error_field is not None:  # refused by the model: a prompt too long, say
        raise InvalidField(ended.error or "", field=ended.error_field)
    if ended.status != "succeeded":
        raise GenerationFailed(f"The generation {ended.status}: {ended.error}.")
    base = str(request.base_url).rstrip("/")
    links = gateway.links
    urls = [
        ("url", links.url(base, job.id, ended.owner, k, native.output_format))
        for k in range(native.num_images)
    ]
    p = ended.parameters
    return created(urls, body, (p.width, p.height))


def model_for(name: str | None, aliases: dict[str, str]) -> str | None:
    """The served model an OpenAI `model` names: an operator's alias, the default for
    OpenAI's own names, else the name itself (a loaded model's)."""
    if name in aliases:
        return aliases[name]
    return None if name is None or OPENAI_MODELS.match(name) else name


def answers_urls(body: OpenAIImageRequest) -> bool:
    """Whether the answer holds links, as OpenAI decides for the model named."""
    model = body.model or ""
    if model.startswith("gpt-image-"):
        return False
    if body.response_format is None:
        return model.startswith("dall-e-")
    return body.response_format == "url"


def b64_images(generated: Generated, native: ImagesRequest) -> list[tuple[str, str]]:
    return [
        (
            "b64_json",
            base64.b64encode(
                encode_image(g.image, g.parameters, native.output_format, native.quality)
            ).decode(),
        )
        for g in generated.generations
    ]


def size_of(generated: Generated) -> tuple[int, int]:
    p = generated.generations[0].parameters
    return p.width, p.height


async def read_form(
    request: Request, limits: InputLimits
) -> tuple[OpenAIImageRequest, dict[str, str]]:
    """`/v1/images/edits`' multipart form: at most two files (`image`, `mask`) and a few
    fields, each bounded; the files go through the native image checks, and OpenAI's mask
    (transparent = repaint) becomes a native one (white = repaint)."""
    async with request.form(max_files=2, max_fields=16, max_part_size=64 * 1024) as form:
        fields: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        for name, value in form.multi_items():
            key = name.removesuffix("[]")
            if isinstance(value, UploadFile):
                if key not in ("image", "mask") or key in files:
                    raise InvalidField(f"`{key}` must be one file, `image` or `mask`.", field=key)
                files[key] = await value.read(limits.max_bytes + 1)
            else:
                fields[key] = value
    try:
        body = OpenAIImageRequest.model_validate(fields)
    except ValidationError as error:
        raise InvalidField(error.errors()[0]["msg"], field=param_of(error)) from None
    if "image" not in files:
        raise InvalidField("`image` must be sent, as a file part of the form.", field="image")
    edit = await anyio.to_thread.run_sync(native_edit, files, limits)
    return body, edit


def native_edit(files: dict[str, bytes], limits: InputLimits) -> dict[str, str]:
    """The native `image` and `mask` (base64): the mask from the mask file's alpha, else from
    the image's own transparency; neither transparent, image-to-image."""
    for field, data in files.items():
        if len(data) > limits.max_bytes:
            raise InvalidField(
                f"`{field}` must be at most {limits.max_bytes} bytes (`IMAGEGEN_MAX_INPUT_BYTES`).",
                field=field,
            )
    edit = {"image": base64.b64encode(files["image"]).decode()}
    source = "mask" if "mask" in files else "image"
    drawn = decoded(opened(files[source], source, limits), source)
    if "transparency" in drawn.info:  # a palette's or a colour key's transparency
        drawn = drawn.convert("RGBA")
    if "A" not in drawn.getbands():
        if source == "mask":
            raise InvalidField(
                "`mask` must have an alpha channel (transparent where the image is to be "
                "edited), but has none.",
                field="mask",
            )
        return edit
    alpha = drawn.getchannel("A")
    lowest, _ = cast(tuple[int, int], alpha.getextrema())
    if source == "image" and lowest > 0:
        return edit  # no transparent pixel: the whole image is redrawn at `strength`
    repaint = alpha.point(lambda value: 255 if value == 0 else 0)
    edit["mask"] = pack(repaint)
    return edit


def openai_error(status: int, document: dict[str, Any]) -> dict[str, Any]:
    """A native error document in OpenAI's shape (its SDK raises by status, and reads
    `error.message`, `type`, `param`, `code`)."""
    detail = document.get("detail")
    first = detail[0] if isinstance(detail, list) and detail else {}
    loc = first.get("loc") if isinstance(first, dict) else None
    field = loc[0] if isinstance(loc, list) and loc else None  # none: the body as a whole
    kind, code = ERROR_KINDS.get(status, ("invalid_request_error", None))
    if status >= 500:
        kind = "server_error"
    return {
        "error": {
            "message": document.get("error", HTTPStatus(status).phrase),
            "type": kind,
            "param": PARAMS.get(field, field) if isinstance(field, str) else None,
            "code": code,
        },
        "request_id": document.get("request_id"),
    }


ERROR_KINDS = {
    401: ("invalid_request_error", "invalid_api_key"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "overloaded"),
    504: ("server_error", "timeout"),
}


def model_list(infos: list[ModelInfo]) -> dict[str, Any]:
    """`GET /v1/models` in OpenAI's list shape."""
    return {
        "object": "list",
        "data": [
            {"id": info.name, "object": "model", "created": 0, "owned_by": "imagegen"}
            for info in infos
        ],
    }


def openai_router(gateway: Callable[[], Gateway]) -> APIRouter:
    """The `/v1` routes; ``gateway`` gives the serving instance's :class:`Gateway`."""
    router = APIRouter(prefix="/v1", tags=["OpenAI Images API"])

    @router.post("/images/generations")
    @answers_errors
    async def generations(body: OpenAIImageRequest, request: Request) -> JSONResponse:
        """OpenAI's `images.generate`: the same queue, batching, limits and keys as
        `/generate/images`; answers and errors in OpenAI's shapes."""
        return await generate(gateway(), body, request, edit={})

    @router.post(EDITS_PATH.removeprefix("/v1"))
    @answers_errors
    async def edits(request: Request) -> JSONResponse:
        """OpenAI's `images.edit`: a multipart form (the one route that takes one) with an
        `image` file, a `mask` whose transparent pixels are repainted, and the fields of
        `/v1/images/generations`."""
        body, edit = await read_form(request, gateway().input_limits)
        return await generate(gateway(), body, request, edit)

    @router.get(SIGNED_LINKS.removeprefix("/v1") + "{job_id}/{name}")
    @answers_errors
    async def signed_image(job_id: str, name: str, expires: int, signature: str) -> Response:
        """An image a `url` answer linked to: no key, the link is the credential (a 403 once
        it expires or if it was not issued here)."""
        number, _, ext = name.partition(".")
        if not number.isdigit() or len(number) > 2 or ext not in EXTENSIONS.values():
            raise Forbidden("This link is not valid: it was not issued here, or has expired.")
        gate = gateway()
        # No job signs as nobody's: an unknown id is a 403 too, so links reveal no job ids.
        owner_id = await gate.jobs.owner_of(job_id) or ""
        gate.links.check(job_id, owner_id, int(number), ext, expires, signature)
        encoded = await gate.jobs.result(owner_id, job_id, int(number))
        return await off_the_loop(lambda: image_response(encoded))

    @router.get("/models")
    async def models() -> dict[str, Any]:
        """The loaded models in OpenAI's list shape."""
        return model_list(await gateway().models())

    return router
