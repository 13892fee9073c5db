"""Request and response bodies; each field documents itself in the OpenAPI page at /docs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from imagegen.controls import MAX_CONTROLS, RESOLUTION, Module, ResizeMode
from imagegen.field_errors import restated
from imagegen.upscalers import MAX_OUTPUT_SIDE, MAX_UPSCALE

OutputFormat = Literal["png", "jpeg", "webp"]
# What a generation starts from: noise, an image, or an image and a mask.
Mode = Literal["text-to-image", "image-to-image", "inpainting"]
# The names imagegen.engine.schedulers builds; a model accepts those compatible with its own.
SchedulerName = Literal[
    "ddim",
    "ddpm",
    "euler",
    "euler_a",
    "heun",
    "dpm++",
    "dpm++_sde",
    "dpm++_2m_sde",
    "dpm++_3m_sde",
    "dpm++_2s",
    "dpm2",
    "dpm2_a",
    "pndm",
    "lms",
    "unipc",
    "lcm",
    "flow_match_euler",
]
# How a sampler spaces its noise levels; blank: the sampler's own (diffusers' default).
ScheduleName = Literal["karras", "exponential", "beta", "sgm_uniform", "uniform"]
SIGMA_SCHEDULES = ("karras", "exponential", "beta")  # diffusers' `use_<name>_sigmas`
# The schedules each sampler takes (what its diffusers class has an option for; a test in
# tests/test_generation.py checks this against the classes).
SCHEDULES: dict[str, tuple[str, ...]] = {
    "euler": ("karras", "exponential", "beta", "sgm_uniform", "uniform"),
    "euler_a": ("sgm_uniform", "uniform"),
    "heun": ("karras", "exponential", "beta", "sgm_uniform", "uniform"),
    "dpm++": ("karras", "exponential", "beta", "sgm_uniform", "uniform"),
    "dpm++_sde": ("karras", "exponential", "beta", "sgm_uniform", "uniform"),
    "dpm++_2m_sde": ("karras", "exponential", "beta", "sgm_uniform", "uniform"),
    "dpm++_3m_sde": ("karras", "exponential", "beta", "sgm_uniform", "uniform"),
    "dpm++_2s": ("karras", "exponential", "beta"),
    "dpm2": ("karras", "exponential", "beta", "sgm_uniform", "uniform"),
    "dpm2_a": ("karras", "exponential", "beta", "sgm_uniform", "uniform"),
    "lms": ("karras", "exponential", "beta", "sgm_uniform", "uniform"),
    "unipc": ("karras", "exponential", "beta", "sgm_uniform", "uniform"),
    "ddim": ("sgm_uniform", "uniform"),
    "ddpm": ("sgm_uniform", "uniform"),
    "pndm": ("sgm_uniform", "uniform"),
    "lcm": ("sgm_uniform", "uniform"),
    "flow_match_euler": ("karras", "exponential", "beta"),
}
MAX_CLIP_SKIP = 12  # CLIP ViT-L has 12 layers
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 2000
MAX_IMAGES = 8
MAX_LORAS = 4  # adapters per request
MAX_PREVIEWS = 16  # kept in a job's event log


class Lora(BaseModel):
    """A LoRA adapter and how strongly to apply it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=200,
        description="A stored adapter of the model, as `name` or `name:version`; `GET /models` "
        "lists each model's.",
    )
    scale: float = Field(
        1.0,
        ge=-2,
        le=2,
        allow_inf_nan=False,
        description="How strongly to apply it: 1 as trained, 0 not at all, negative against it.",
    )


def side(description: str) -> Any:
    """An image side a request may leave blank: a multiple of 8 the pipelines take."""
    return Field(None, ge=64, le=2048, multiple_of=8, description=description)


class Described(BaseModel):
    """A request body whose errors are sentences that name the field, the rule and the
    value, whatever the client."""

    @model_validator(mode="wrap")
    @classmethod
    def _sentences(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        try:
            return handler(data)
        except ValidationError as error:
            raise restated(error) from None


class HiresRequest(BaseModel):
    """Hires fix: draw at the asked size, upscale, and draw again at the larger size with
    image-to-image on the same weights, so a model made for 512 gives a clean 1024 image."""

    model_config = ConfigDict(extra="forbid")

    scale: float | None = Field(
        None,
        ge=1,
        le=4,
        allow_inf_nan=False,
        description="How many times larger the final image is than the first pass, each side "
        "rounded down to a multiple of 8 (1: a second pass at the same size). Leave blank "
        "for 2, or give `width`/`height`.",
    )
    width: int | None = side("The final width instead of `scale`; a blank side keeps the ratio.")
    height: int | None = side("The final height instead of `scale`.")
    upscaler: str = Field(
        "Latent",
        min_length=1,
        max_length=200,
        description="How the first image is enlarged, by AUTOMATIC1111's names: `Latent` "
        "(and its variants), `Lanczos`, `Nearest`, `None`, or a stored upscaling model; "
        "`GET /models` lists each model's `upscalers`.",
    )
    steps: int | None = Field(
        None,
        ge=1,
        le=150,
        description="The second pass's `num_inference_steps`, of which it runs `strength`'s "
        "share. Leave blank for the first pass's.",
    )
    strength: float = Field(
        0.7,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="How far the second pass moves from the enlarged image (`Latent` needs "
        "about 0.5 or more to draw its blur away).",
    )
    prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="The second pass's; blank: the first's."
    )
    negative_prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="The second pass's; blank: the first's."
    )
    scheduler: SchedulerName | None = Field(
        None, description="The second pass's sampler; blank: the first's."
    )

    @model_validator(mode="after")
    def _one_size(self) -> HiresRequest:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise PydanticCustomError("hires_size", "give `scale` or `width`/`height`, not both.")
        return self


class ControlRequest(BaseModel):
    """A ControlNet guiding the generation by an image: the prompt says what, the control
    image says where (edges, a silhouette, a scribble, a depth or pose map)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=200,
        description="A stored ControlNet of the model's family, as `name` or `name:version`; "
        "`GET /models` lists each model's `controlnets`.",
    )
    image: str = Field(
        description="The control image: a PNG, JPEG or WebP, base64 (a `data:image/...;base64,` "
        "prefix is allowed), checked as an edit's `image` is; `module` turns it into the "
        "map the ControlNet reads, or leave `module` at `none` to send the map itself."
    )
    module: Module = Field(
        "none",
        description="Its preprocessor, by sd-webui-controlnet's names: `none` (the image is "
        "the map), `canny` (edges), `invert` (black lines on white to white on black), "
        "`threshold` (black and white), `scribble_xdog`, `lineart_standard`, "
        "`blur_gaussian`. `POST /controlnet/detect` shows what one makes.",
    )
    threshold_a: float | None = Field(
        None,
        allow_inf_nan=False,
        description="The module's first setting: `canny`'s low threshold (1-255, default "
        "100), `threshold`'s level (0-255, 127), `scribble_xdog`'s (1-64, 32), "
        "`blur_gaussian`'s sigma (0.01-64, 9). Leave blank for the default.",
    )
    threshold_b: float | None = Field(
        None,
        allow_inf_nan=False,
        description="The module's second setting: `canny`'s high threshold (1-255, default "
        "200). Leave blank for the default.",
    )
    processor_res: int | None = Field(
        None,
        ge=RESOLUTION[0],
        le=RESOLUTION[1],
        description="The size (shorter side) the module draws its map at, before the map is "
        "fitted to the output. Leave blank for pixel perfect: the size at which the map "
        "needs no resampling.",
    )
    resize_mode: ResizeMode = Field(
        "crop",
        description="How a control image of another shape than the output meets it: `crop` "
        "(cover it, cut the overflow evenly), `resize` (stretch) or `fill` (fit inside, "
        "fill the rest).",
    )
    scale: float = Field(
        1.0,
        ge=0,
        le=2,
        allow_inf_nan=False,
        description="How strongly it guides: 1 as trained, 0 not at all (it is then left out "
        "of the call, and the image is the one made without it).",
    )
    start: float = Field(
        0.0,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="When it starts guiding, as a share of the denoising steps.",
    )
    end: float = Field(
        1.0,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="When it stops guiding, as a share of the steps; more than `start`.",
    )

    @model_validator(mode="after")
    def _starts_before_end(self) -> ControlRequest:
        if self.start >= self.end:
            raise PydanticCustomError(
                "control_span",
                f"`start` must be less than `end`, but is {self.start:g} with `end` {self.end:g}.",
            )
        return self


class ControlParameters(BaseModel):
    """A control as resolved: its ControlNet by `name:version`, and its image's digest."""

    name: str
    scale: float
    start: float
    end: float
    module: str
    image_sha256: str = Field(description="SHA-256 of the control image's file as sent.")


class HiresParameters(BaseModel):
    """The second pass as resolved."""

    width: int
    height: int
    upscaler: str
    num_inference_steps: int
    strength: float
    prompt: str
    negative_prompt: str
    scheduler: str


IMAGE_REQUEST_EXAMPLE: dict[str, JsonValue] = {
    "prompt": "a lighthouse on a cliff at sunset, oil painting",
    "negative_prompt": "blurry, low quality",
    "width": 64,
    "height": 64,
    "num_inference_steps": 4,
    "guidance_scale": 7.5,
    "seed": 42,
    "scheduler": "euler",
    "output_format": "png",
}


class ImageRequest(Described):
    """Body of `POST /generate/image`: what to draw and how."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": IMAGE_REQUEST_EXAMPLE})

    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS, description="What the image should show."
    )
    negative_prompt: str = Field(
        "", max_length=MAX_PROMPT_CHARS, description="What the image should not show."
    )
    width: int | None = side(
        "Width in pixels, a multiple of 8. Leave blank for the model's native size."
    )
    height: int | None = side(
        "Height in pixels, a multiple of 8. Leave blank for the model's native size."
    )
    num_inference_steps: int | None = Field(
        None,
        ge=1,
        le=150,
        description="Denoising steps: more is slower and usually finer. Leave blank for the "
        "model's default.",
    )
    guidance_scale: float | None = Field(
        None,
        ge=0,
        le=30,
        allow_inf_nan=False,
        description="How closely to follow the prompt; 0 or 1 turns classifier-free guidance "
        "off. Leave blank for the model's default.",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Random seed: the same body and seed give the same image. Leave blank to "
        "randomize; the seed used comes back in `X-Seed`.",
    )
    scheduler: SchedulerName | None = Field(
        None,
        description="Sampler. Leave blank for the model's own; `GET /models` lists the ones "
        "each model accepts.",
    )
    schedule: ScheduleName | None = Field(
        None,
        description="How the sampler spaces its noise levels (AUTOMATIC1111's schedule type): "
        "`karras`, `exponential`, `beta`, `sgm_uniform` or `uniform`. Leave blank for the "
        "sampler's own; docs/api.md lists which samplers take which.",
    )
    clip_skip: int | None = Field(
        None,
        ge=1,
        le=MAX_CLIP_SKIP,
        description="Which layer of the CLIP text encoder reads the prompt, counted from the "
        "last, as AUTOMATIC1111 counts: 1 the last (no skip), 2 the one before it (what many "
        "anime models expect). Leave blank for 1. Not for FLUX.1.",
    )
    output_format: OutputFormat = Field("png", description="Image encoding of the response.")
    quality: int = Field(
        90, ge=1, le=100, description="Encoder quality for jpeg and webp; png is lossless."
    )
    model: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Model as `name` or `name:version`. Leave blank for the served model; "
        "`GET /models` lists them.",
    )
    image: str | None = Field(
        None,
        description="Starting image, for image-to-image (or inpainting, with `mask`): a PNG, "
        "JPEG or WebP, base64 (a `data:image/...;base64,` prefix is allowed). Blank `width` "
        "and `height` take its size, rounded down to a multiple of 8; given, it is resized "
        "to them. Leave blank for text-to-image.",
    )
    strength: float = Field(
        0.75,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="How far to move from `image`: near 0 keeps it, 1 redraws it; the edit "
        "runs `num_inference_steps` x `strength` steps. Only with `image`.",
    )
    mask: str | None = Field(
        None,
        description="Inpainting mask: a PNG (or JPEG, WebP), base64, the size of `image`. "
        "White is repainted, black kept (grey is cut at half; transparent counts as black). "
        "Only with `image`.",
    )

    hires: HiresRequest | None = Field(
        None,
        description="Hires fix: a second pass at a larger size (text-to-image only). Leave "
        "blank for one pass.",
    )

    cache: bool | None = Field(
        None,
        description="Step caching: reuse between denoising steps what changed little "
        "(`step_cache` in `/models` names each model's method), faster at the price of a "
        "slightly different image. Leave out for the model's `cache_default` (off unless "
        "the operator turned it on); false: every step computed in full.",
    )

    loras: list[Lora] = Field(
        default_factory=list,
        max_length=MAX_LORAS,
        description=f"LoRA adapters to apply, at most {MAX_LORAS}, each once; their effects "
        "add up. Leave empty for the model alone.",
    )

    controlnets: list[ControlRequest] = Field(
        default_factory=list,
        max_length=MAX_CONTROLS,
        description=f"ControlNets guiding the image by control images, at most {MAX_CONTROLS} "
        "(their guidance adds up). With `image` and `mask` where the model's family allows "
        "(`control_modes` in `/models`), and with `hires` (the second pass is guided too).",
    )

    @field_validator("loras")
    @classmethod
    def _each_lora_once(cls, value: list[Lora]) -> list[Lora]:
        names = [lora.name for lora in value]
        if len(set(names)) != len(names):
            raise ValueError(f"`loras` must name each adapter once, but names {names}")
        return value

    @field_validator("strength", "mask")
    @classmethod
    def _needs_image(cls, value: Any, info: ValidationInfo) -> Any:
        # Runs only for fields the client sent: a default never needs an image.
        if value is not None and "image" in info.data and info.data["image"] is None:
            raise ValueError(f"`{info.field_name}` must come with `image`, which is missing")
        return value

    @model_validator(mode="after")
    def _hires_from_noise(self) -> ImageRequest:
        if self.hires is not None and self.image is not None:
            raise PydanticCustomError(
                "hires_edit",
                "`hires` is for text-to-image: leave it blank with `image`, which already "
                "sets the size.",
            )
        return self


class ImagesRequest(ImageRequest):
    """Body of `POST /generate/images`: the fields of `/generate/image`, and how many images."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {**IMAGE_REQUEST_EXAMPLE, "num_images": 4}}
    )

    num_images: int = Field(
        1,
        ge=1,
        le=MAX_IMAGES,
        description="How many images, generated as one batch. Image k (from 0) uses seed "
        "`seed + k`, so `/generate/image` with that seed regenerates it (within 1/255 per "
        "pixel; byte-identical with batching off).",
    )

    @model_validator(mode="after")
    def _seeds_fit(self) -> ImagesRequest:
        if self.seed is not None and self.seed + self.num_images - 1 > MAX_SEED:
            raise PydanticCustomError(
                "seed_range",
                f"`seed` + `num_images` - 1 must be at most {MAX_SEED}, "
                f"but is {self.seed + self.num_images - 1}.",
            )
        return self


class UpscaleRequest(Described):
    """Body of `POST /upscale`: an image made larger by an upscaler, nothing redrawn."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"image": "iVBORw0KGgo...", "scale": 2, "upscaler": "Lanczos"}
        },
    )

    image: str = Field(
        description="The image: a PNG, JPEG or WebP, base64 (a `data:image/...;base64,` prefix "
        "is allowed), checked as an edit's `image` is."
    )
    scale: float | None = Field(
        None,
        ge=1,
        le=MAX_UPSCALE,
        allow_inf_nan=False,
        description="How many times larger each side gets. Leave blank for 2, or give "
        "`width`/`height`.",
    )
    width: int | None = Field(
        None,
        ge=1,
        le=MAX_OUTPUT_SIDE,
        description="The width instead of `scale`; a blank side keeps the aspect ratio.",
    )
    height: int | None = Field(
        None, ge=1, le=MAX_OUTPUT_SIDE, description="The height instead of `scale`."
    )
    crop: bool = Field(
        False,
        description="With `width` and `height` of another shape than the image: fill them "
        "and cut the overflow evenly at both ends, instead of stretching the image.",
    )
    upscaler: str = Field(
        "Lanczos",
        min_length=1,
        max_length=200,
        description="`Lanczos`, `Nearest`, `None` (a Lanczos resize) or a stored upscaling "
        "model; `GET /upscalers` lists them (the latent ones are for hires fix only).",
    )
    output_format: OutputFormat = Field("png", description="Image encoding of the response.")
    quality: int = Field(
        90, ge=1, le=100, description="Encoder quality for jpeg and webp; png is lossless."
    )

    @model_validator(mode="after")
    def _one_size(self) -> UpscaleRequest:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise PydanticCustomError(
                "upscale_size", "`/upscale` takes `scale` or `width`/`height`, not both."
            )
        return self


class UpscaleParameters(BaseModel):
    """What an upscaled image was made with (its PNG's `parameters` chunk)."""

    width: int
    height: int
    upscaler: str


class GenerationParameters(BaseModel):
    """The parameters an image was actually made with, defaults and seed resolved."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    scheduler: str
    schedule: str | None = Field(None, description="The noise schedule; null: the sampler's own.")
    clip_skip: int = Field(1, description="The CLIP layer read, from the last (1: no skip).")
    model: str = Field(description="`name:version` of the model.")
    mode: Mode = "text-to-image"
    strength: float | None = Field(None, description="An edit's `strength`; null otherwise.")
    image_sha256: str | None = Field(
        None, description="SHA-256 of the input image's file as sent (base64-decoded)."
    )
    mask_sha256: str | None = Field(None, description="SHA-256 of the mask's file as sent.")
    loras: list[Lora] = Field(
        default_factory=list, description="Adapters applied, by `name:version`, and scales."
    )
    hires: HiresParameters | None = Field(None, description="Hires fix's second pass, if any.")
    cache: bool = Field(False, description="Whether steps were cached (`step_cache`).")
    controlnets: list[ControlParameters] = Field(
        default_factory=list, description="The ControlNets that guided it (scale 0 left out)."
    )

    @property
    def denoising_steps(self) -> int:
        """Steps the pipeline runs: an edit starts `strength` of the way into the schedule
        (diffusers' rule, to the step)."""
        if self.strength is None:
            return self.num_inference_steps
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)

    @property
    def all_steps(self) -> int:
        """Steps of both passes, with hires fix."""
        second = self.second_pass()
        return self.denoising_steps + (second.denoising_steps if second else 0)

    def second_pass(self) -> GenerationParameters | None:
        """Hires fix's second pass: image-to-image at the larger size, same seed and weights."""
        hires = self.hires
        if hires is None:
            return None
        return self.model_copy(
            update={
                "width": hires.width,
                "height": hires.height,
                "num_inference_steps": hires.num_inference_steps,
                "strength": hires.strength,
                "prompt": hires.prompt,
                "negative_prompt": hires.negative_prompt,
                "scheduler": hires.scheduler,
                "mode": "image-to-image",
                "hires": None,
            }
        )


class WorkItem(BaseModel):
    """One image for the generator service, and the id its progress and cancellation use."""

    id: str
    parameters: GenerationParameters
    report: bool = Field(False, description="Publish a step event after every denoising step.")
    preview: bool = Field(False, description="Add a preview image to its step events.")
    image: str | None = Field(None, description="An edit's input image at the output size, PNG.")
    mask: str | None = Field(None, description="Its binary mask at the output size, PNG.")
    controls: list[str] = Field(
        default_factory=list,
        description="The control maps at the output size, PNG, one per `controlnets` entry.",
    )


class EncodedImage(BaseModel):
    data: str = Field(description="The encoded image, base64.")
    seed: int
    format: OutputFormat


class Timings(BaseModel):
    queue_ms: float = Field(
        description="Time not spent generating: waiting for the model and for a batch to "
        "fill, and passing between the service's processes."
    )
    inference_ms: float = Field(
        description="From the start of the first pipeline call that made one of these images "
        "to the end of the last; a call may be shared with other requests' images."
    )
    # Parts of the two above; 0 in results stored before they were measured.
    hop_ms: float = Field(
        0.0,
        description="Part of `queue_ms`: passing between the service's processes both ways, "
        "and waiting in the generator's batching queue.",
    )
    setup_ms: float = Field(
        0.0,
        description="Part of `queue_ms`: in the generator, from the request's arrival to its "
        "pipeline call (checks, the call's scheduler, earlier calls of the same batch).",
    )
    decode_ms: float = Field(
        0.0,
        description="Part of `inference_ms`: after the last denoising step, the VAE decode "
        "to pixels.",
    )


class ImagesResponse(BaseModel):
    """Answer of `POST /generate/images`."""

    images: list[EncodedImage]
    parameters: GenerationParameters = Field(description="As resolved; `seed` is image 0's.")
    timings: Timings


Guidance = Literal["classifier-free", "distilled", "none"]


class AdapterInfo(BaseModel):
    """A stored LoRA adapter of a model."""

    name: str
    version: str

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"


class ControlNetInfo(AdapterInfo):
    """A stored ControlNet that fits a model: its requests may name it."""


class ModelInfo(BaseModel):
    """A loaded model and the defaults it applies to blank request fields."""

    name: str
    version: str
    family: str = Field(description="Its pipeline family: `sd`, `sdxl`, `sd3` or `flux`.")
    pipeline: str = Field(description="The diffusers pipeline class.")
    device: str
    dtype: str
    native_width: int
    native_height: int
    default_steps: int
    default_guidance_scale: float
    default_scheduler: str
    schedulers: list[str] = Field(description="Values the `scheduler` field accepts.")
    modes: list[Mode] = Field(description="What it can start from: noise, an image, a mask.")
    switches: list[str] = Field(description="Performance switches in effect.")
    guidance: Guidance = Field(
        description="What `guidance_scale` does: `classifier-free` (the denoiser runs on the "
        "prompt and on `negative_prompt`), `distilled` (an input of one pass; no negative "
        "prompt) or `none` (the model ignores it; leave it blank)."
    )
    weights_bytes: int = Field(description="Memory its weights take, all components.")
    loras: list[AdapterInfo] = Field(
        default_factory=list, description="Its stored LoRA adapters, which `loras` may name."
    )
    upscalers: list[str] = Field(
        default_factory=list,
        description="What its hires fix may name as `hires.upscaler`; `GET /upscalers` "
        "describes each.",
    )
    controlnets: list[ControlNetInfo] = Field(
        default_factory=list,
        description="The stored ControlNets that fit it, which `controlnets[].name` may name.",
    )
    control_modes: list[Mode] = Field(
        default_factory=list,
        description="The modes a ControlNet can guide for it (SD3's pipelines: text-to-image "
        "only); hires fix's second pass needs `image-to-image`.",
    )
    step_cache: str | None = Field(
        None,
        description="What `cache` turns on for it: `first-block-cache` (FLUX) or "
        "`pyramid-attention-broadcast` (the UNets, SD3); null: none (as when compiled).",
    )
    cache_default: bool = Field(
        False,
        description="Whether a request that leaves `cache` out caches steps "
        "(`IMAGEGEN_CACHE_MODELS`).",
    )
    max_request_work: float = Field(
        description="Most work one request or job may ask for, in megapixel-steps: per image, "
        "width x height / 10^6 x its steps (doubled when `guidance_scale` > 1 and for "
        "two-evaluation schedulers such as Heun), plus one for decoding."
    )

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where the error is: the field's name.")
    msg: str = Field(description="What is wrong, as a sentence.")
    type: str = Field(description="The rule broken, such as `multiple_of` or `missing`.")


class ErrorBody(BaseModel):
    """Every error answer, whatever its status."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "error": "`width` must be a multiple of 8, but is 65.",
                "request_id": "4f0c7d4e9b0a4b7f8a51c2e3d4f5a6b7",
                "detail": [
                    {
                        "loc": ["width"],
                        "msg": "`width` must be a multiple of 8, but is 65.",
                        "type": "multiple_of",
                    }
                ],
            }
        }
    )

    error: str = Field(
        description="One sentence; for a bad field it names the field, the rule and the value."
    )
    request_id: str = Field(description="Also in `X-Request-ID` and on the server's log line.")
    detail: list[FieldError] | None = Field(
        None, description="For a request that breaks the schema: one entry per broken rule."
    )


JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobRequest(ImagesRequest):
    """Body of `POST /jobs`: the fields of `/generate/images`, and where to be told the end."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {**IMAGE_REQUEST_EXAMPLE, "num_images": 2}}
    )

    webhook: str | None = Field(
        None,
        max_length=2000,
        description="An http(s) URL notified once when the job ends, with a signed JSON body; "
        "its host must be one the operator allows (`IMAGEGEN_WEBHOOK_HOSTS`).",
    )
    preview: bool = Field(
        False,
        description=f"Make small preview images of the first image as it is drawn (at most "
        f"{MAX_PREVIEWS}, spread over the steps), for `events?preview=true`; without it none "
        "is made or kept.",
    )


class JobLinks(BaseModel):
    self: str = Field(description="The job's status.")
    events: str = Field(description="Its Server-Sent Events stream.")
    result: str = Field(description="Its images, once it has succeeded.")


class JobAccepted(BaseModel):
    """Answer of `POST /jobs` (202, with `Location` set to `links.self`)."""

    id: str
    status: JobStatus
    queue_position: int = Field(description="Requests ahead of it on this server.")
    links: JobLinks


class Progress(BaseModel):
    step: int = Field(
        description="Denoising steps done, averaged over the job's images (with hires fix, "
        "both passes' in a row)."
    )
    steps: int = Field(description="Denoising steps per image, both passes' with hires fix.")
    current_pass: int = Field(
        1, description="1, or 2 during hires fix's second pass (at the larger size)."
    )
    fraction: float = Field(description="Share of all the job's steps done, 0 to 1.")


class JobView(BaseModel):
    """Answer of `GET /jobs/{id}`."""

    id: str
    status: JobStatus
    progress: Progress
    eta_s: float | None = Field(description="Estimated seconds until it ends, when known.")
    queue_position: int | None = Field(description="Requests ahead of it; null once finished.")
    created_at: float = Field(description="Unix time of submission.")
    started_at: float | None
    finished_at: float | None
    error: str | None = Field(description="Why it failed or was cancelled.")
    error_field: str | None = Field(
        None, description="The request field `error` names, when it names one."
    )
    parameters: GenerationParameters = Field(description="As resolved; `seed` is image 0's.")
