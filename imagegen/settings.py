"""Service configuration, read once from ``IMAGEGEN_*`` environment variables."""

from __future__ import annotations

import sys
from functools import cached_property, lru_cache
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, get_args, get_origin

from pydantic import Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegen.hop import api_name, model_name
from imagegen.schemas import MAX_LORAS
from models.recipes import EMBEDDED

DtypeName = Literal["auto", "float32", "float16", "bfloat16"]
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune"]
Switch = Literal["auto", "on", "off"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Settings(BaseSettings):
    """Every knob of the service; `python -m imagegen.settings` writes docs/configuration.md
    from this class."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", frozen=True)

    model: str = Field(
        EMBEDDED.name,
        min_length=1,
        description="Model to serve, as `name` or `name:version` in the BentoML model store; "
        "the default, `sd-shapes`, is the demo model trained in this repository. A one-model "
        "`models`.",
    )
    models: str = Field(
        "",
        pattern=r"^([^,\s]+(,[^,\s]+)*)?$",
        description="Models to serve, comma-separated (`sd-shapes,sd15:v3,...`), each loaded "
        "once at start-up with its own queue; the first is the default of a blank `model` "
        "field. Empty: `model` alone.",
    )
    max_loras: int = Field(
        8,
        ge=MAX_LORAS,
        description="LoRA adapters kept loaded per model; the least recently used is unloaded "
        f"past it. At least {MAX_LORAS}, the most one request may apply.",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="Torch device: `auto` (CUDA when available, else CPU), `cpu`, `cuda`, "
        "`cuda:N` or `mps`.",
    )
    dtype: DtypeName = Field(
        "auto", description="Weights dtype: `auto` is float16 on CUDA and float32 elsewhere."
    )
    log_level: LogLevel = Field("INFO", description="Level of this service's own log lines.")
    warmup: bool = Field(
        True,
        description="Run short generations before reporting ready: one per size to warm the "
        "model up and, with batching on and generations through BentoML's hop (the generator "
        "not on a local socket), those that teach BentoML's batching queue its timings (it "
        "holds lone requests while it learns).",
    )
    warmup_sizes: str = Field(
        "",
        pattern=r"^(\d+x\d+(,\d+x\d+)*)?$",
        description="Sizes to warm up, such as `512x512,768x512` (with `compile`, each is "
        "compiled at start-up); empty means the model's native size.",
    )
    channels_last: Switch = Field(
        "off",
        description="UNet/VAE in channels-last memory format; `auto` is on with CUDA. Off by "
        "default: it measured slower on an H200 (docs/benchmarks.md, GPU).",
    )
    compile: CompileMode = Field(
        "off",
        description="`torch.compile` the denoiser with this mode; `off` skips it. Pair it "
        "with the `warmup_sizes` you serve. On CPU, inductor compiles C++: it needs a C++ "
        "compiler and Python's headers (Debian: `g++ python3-dev`); on CUDA it uses Triton.",
    )
    attention_slicing: bool = Field(
        False, description="Compute attention in slices: less memory, slower."
    )
    vae_slicing: bool = Field(False, description="Decode a batch one image at a time.")
    vae_tiling: bool = Field(
        False, description="Decode large images in tiles, so they fit in less memory."
    )
    cpu_offload: bool = Field(
        False, description="Keep submodels on the CPU until used (CUDA only): less GPU memory."
    )
    timeout: int = Field(
        600,
        ge=1,
        description="Seconds a request or job may take from its arrival; past that its work "
        "is cancelled (a synchronous request gets 504, a job ends `failed`). BentoML's own "
        "timeout stays 30 s above it as a backstop.",
    )
    max_request_work: float | None = Field(
        None,
        gt=0,
        description="Most work one request or job may ask for, in megapixel-steps (per image, "
        "width x height / 10^6 x its steps, doubled with guidance and for Heun, plus one for "
        "decoding); more is a 400. Unset: 2000 on CUDA, 200 on MPS, 16 on CPU. `GET /models` "
        "shows the value in effect.",
    )
    max_queue_wait_s: float = Field(
        60,
        gt=0,
        description="Longest estimated wait (work queued ahead x measured seconds per unit) "
        "a new request may join; past it the answer is 503 with `Retry-After` from the "
        "estimate, and `/readyz` turns 503.",
    )
    max_concurrency: int = Field(
        16,
        ge=1,
        description="Requests in flight per service, event streams included; more are "
        "answered 429 with `Retry-After` (BentoML's own limit stays at twice this as a backstop).",
    )
    max_concurrency_per_key: int | None = Field(
        None,
        ge=1,
        description="Requests in flight per API key (per client address with auth off), event "
        "streams included, so one client cannot hold every slot; more are answered 429 with "
        "`Retry-After`. Unset: half of `max_concurrency` (at least 1).",
    )
    body_timeout_s: float = Field(
        30,
        gt=0,
        description="Seconds a request body may take to arrive, from the request's start; a "
        "slower one is answered 408 and its connection closed, so a trickled body holds a "
        "slot no longer than this.",
    )
    max_batch_size: int = Field(
        8,
        ge=1,
        le=64,
        description="Most images in one pipeline call: concurrent requests of the same shape "
        "run together up to this (those that arrive while the model is busy share its next "
        "call; BentoML's adaptive batching where the generator is not on a local socket); 1 "
        "turns batching off.",
    )
    max_latency_ms: int = Field(
        60_000,
        ge=100,
        description="BentoML's adaptive batching's latency bound (where the generator is not on "
        "a local socket): how long it may hold requests to fill a batch. Waiting is bounded by "
        "`max_queue_wait_s`, checked before a request joins.",
    )
    api_keys: str = Field(
        "", description="Comma-separated API keys; none (and no keys file) turns auth off."
    )
    api_keys_file: Path | None = Field(
        None,
        description="File of API keys, one per line; a line may be `sha256:<hex>` of a key, so "
        "the file need not hold the key itself; `#` starts a comment.",
    )
    metrics_key: str = Field(
        "",
        description="With auth on, the key Prometheus sends for `/metrics` (`Authorization: "
        "Bearer <key>`; it opens nothing else, and API keys do not open `/metrics`); unset, "
        "`/metrics` answers 401. With auth off `/metrics` is open like everything else.",
    )
    log_prompts: bool = Field(
        False, description="Put prompts in the access log lines (they can hold personal data)."
    )
    tracing: bool = Field(
        False,
        description="BentoML's OpenTelemetry spans for every request and each of its messages "
        "(BentoML's `tracing` configuration names the exporter). Off, its middleware passes "
        "requests through untouched: about 1 ms a request less on two cores.",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1,
        description="Largest request body accepted; larger ones get 413 unread. 16 MiB holds a "
        "2048x2048 photograph as PNG (about 8 MiB, 11 as base64) and its mask.",
    )
    max_input_pixels: int = Field(
        2048 * 2560,
        ge=64 * 64,
        description="Most pixels an input image or mask may have, checked from its header "
        "before it is decoded; a little above the largest output (2048x2048).",
    )
    max_input_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1,
        description="Largest input image or mask file, in bytes once base64-decoded.",
    )
    rate_limit: str | None = Field(
        None,
        pattern=r"^[1-9][0-9]*/(second|minute|hour|day)$",
        description="Requests per API key (per client address when auth is off) in each "
        "window of that length, such as `60/minute`; unset means no limit.",
    )
    work_rate_limit: str | None = Field(
        None,
        pattern=r"^[1-9][0-9]*/(second|minute|hour|day)$",
        description="Work per API key (per client address when auth is off) in each window, "
        "in megapixel-steps, such as `600/minute`; charged when a generation is admitted. "
        "Unset means no limit.",
    )
    redis_url: str | None = Field(
        None,
        pattern=r"^rediss?://",
        description="Redis for state shared by replicas: jobs (any replica answers for any "
        "job), cancels, and the rate limits when `rate_limit_storage` is left `memory://`. "
        "Unset: jobs live in this process.",
    )
    job_ttl: int = Field(
        3600,
        ge=1,
        description="Seconds a finished job and its result are kept; later its paths answer 410.",
    )
    max_jobs: int = Field(
        1000,
        ge=1,
        description="Most jobs stored at once (unexpired, any status); past it `POST /jobs` "
        "answers 503 with `Retry-After`.",
    )
    max_jobs_per_key: int = Field(
        100,
        ge=1,
        description="Most jobs one API key may hold at once (unexpired, any status), so one "
        "key cannot fill the store for the others; past it its `POST /jobs` answers 429 with "
        "`Retry-After`. With auth off every client is one owner, bounded by `max_jobs` alone.",
    )
    max_result_bytes: int = Field(
        2 * 1024**3,
        ge=128 * 1024**2,
        description="Most bytes of finished jobs' images kept at once (in this process, or in "
        "Redis); past it the oldest results are dropped early (their paths answer 410), so new "
        "work is never refused for old results. At least 128 MiB, more than one job's worth.",
    )
    max_result_bytes_per_key: int = Field(
        512 * 1024**2,
        ge=128 * 1024**2,
        description="The same per API key: past it that key's own oldest results are dropped, "
        "so no key holds more than this of the total.",
    )
    webhook_hosts: str = Field(
        "",
        description="Comma-separated `host:port` (that port) or bare host names (port 80 or "
        "443 only) a job's `webhook` may name; empty turns webhooks off. No other URL a client "
        "gives is ever fetched.",
    )
    webhook_secret: str = Field(
        "",
        description="Key of the HMAC-SHA256 signature sent with each webhook, over its id, "
        "timestamp and body as Standard Webhooks sign (`webhook-signature`; docs/jobs.md).",
    )
    allowed_origins: str = Field(
        "",
        description="Comma-separated web origins (`https://chat.example.com`) whose pages may "
        "send state-changing requests; any other foreign `Origin` (or `Sec-Fetch-Site: "
        "cross-site`) is refused with 403. API clients send no `Origin`.",
    )
    openai_models: str = Field(
        "",
        description="OpenAI model names mapped to served models, such as "
        "`dall-e-3=sdxl,gpt-image-1=sd-shapes`. OpenAI's own names (`dall-e-2`, `dall-e-3`, "
        "`gpt-image-*`) not listed reach the default model. Each must be a served model: a "
        "bad entry stops the service at start.",
    )
    cache_models: str = Field(
        "",
        description="Models whose requests cache steps (`cache`) unless they ask not to: "
        "names, comma-separated, or `*` for every model that has a step cache. Empty: a "
        "request opts in with `cache: true`. Each must be a served model.",
    )
    url_secret: str = Field(
        "",
        description="Key that signs the expiring image links of OpenAI's `response_format: "
        "url`. Set the same on every replica; unset, each process draws its own (links then "
        "work only on the replica that made them, and not across restarts).",
    )
    rate_limit_storage: str = Field(
        "memory://",
        pattern=r"^(memory|redis|rediss|redis\+cluster|redis\+sentinel)://",
        description="Where the rate limit's windows live, a `limits` storage URL: "
        "`memory://` (this process), or `redis://host:port/db` to share them across workers "
        "and replicas.",
    )

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> Settings:
        if self.webhook_hosts.strip() and not self.webhook_secret:
            raise ValueError("`webhook_secret` must be set when `webhook_hosts` is")
        return self

    @model_validator(mode="after")
    def _model_names_differ(self) -> Settings:
        names = [api_name(tag) for tag in self.model_tags]
        if len(set(names)) != len(names):
            raise ValueError(f"`models` must name each model once, but is {self.models!r}")
        return self

    @model_validator(mode="after")
    def _cache_models_are_served(self) -> Settings:
        served = {model_name(tag) for tag in self.model_tags}
        unknown = self.cached_models - served - {"*"}
        if unknown:
            raise ValueError(
                f"`cache_models` must name served models ({', '.join(sorted(served))}) or "
                f"`*`, but names {', '.join(sorted(unknown))}"
            )
        return self

    @property
    def cached_models(self) -> set[str]:
        """``cache_models``' names (``*``: every model)."""
        return {name.strip() for name in self.cache_models.split(",") if name.strip()}

    @model_validator(mode="after")
    def _openai_models_are_served(self) -> Settings:
        served = {model_name(tag) for tag in self.model_tags}
        for name, model in self.openai_model_map.items():
            if not name or model_name(model) not in served:
                raise ValueError(
                    f"`openai_models` must map names to served models "
                    f"({', '.join(sorted(served))}) as `name=model`, but maps {name!r} to "
                    f"{model!r}"
                )
        return self

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(o.strip() for o in self.allowed_origins.split(",") if o.strip())

    @cached_property
    def openai_model_map(self) -> dict[str, str]:
        """OpenAI model name -> served model, from `openai_models` (read once)."""
        pairs = (entry.partition("=") for entry in self.openai_models.split(",") if entry.strip())
        return {name.strip(): model.strip() for name, _, model in pairs}

    @property
    def concurrency_per_key(self) -> int:
        """``max_concurrency_per_key``, or half of ``max_concurrency`` when unset."""
        return self.max_concurrency_per_key or max(1, self.max_concurrency // 2)

    @property
    def limits_storage(self) -> str:
        """Where the rate limits' windows live: the replicas' Redis when there is one and no
        other storage is named."""
        if self.redis_url and self.rate_limit_storage == "memory://":
            return self.redis_url
        return self.rate_limit_storage

    @property
    def model_tags(self) -> list[str]:
        """The served models, the default first."""
        return self.models.split(",") if self.models else [self.model]

    @property
    def warmup_shapes(self) -> list[tuple[int, int]]:
        """``warmup_sizes`` as (width, height) pairs."""
        return [
            (int(width), int(height))
            for width, height in (size.split("x") for size in self.warmup_sizes.split(",") if size)
        ]

    @property
    def bentoml_tracing(self) -> dict[str, Any]:
        """``@bentoml.service``'s ``tracing``: every URL excluded unless tracing is on."""
        return {} if self.tracing else {"excluded_urls": [".*"]}

    @property
    def batching(self) -> dict[str, Any]:
        """``@bentoml.api`` arguments of the batched pipeline API (BentoML's smallest batch
        size is 2, so batch size 1 is a plain API)."""
        if self.max_batch_size == 1:
            return {"batchable": False}
        return {
            "batchable": True,
            "max_batch_size": self.max_batch_size,
            "max_latency_ms": self.max_latency_ms,
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` to re-read the env."""
    return Settings()


REFERENCE_HEADER = """# Configuration

Generated from `imagegen.settings.Settings` by
`python -m imagegen.settings > docs/configuration.md`; a test fails when this page and the class
disagree.

Every setting is read once at start-up from its environment variable. A bad value stops the
service at start-up with a message naming the variable's field and rule. `BENTOML_HOME` moves
the model store (default `~/bentoml`); `BENTOML_DO_NOT_TRACK=true` turns BentoML's usage
reporting off. `GET /models` lists the performance switches in effect per model (`switches`).

| variable | default | values | meaning |
|---|---|---|---|
"""


def _values(field: FieldInfo) -> str:
    """What a field takes, for people: its choices, or its kind and bounds."""
    kind: Any = field.annotation
    if isinstance(kind, UnionType):  # `X | None`: unset is its default, not a value
        kind = next(arg for arg in get_args(kind) if arg is not NoneType)
    if get_origin(kind) is Literal:
        return ", ".join(f"`{choice}`" for choice in get_args(kind))
    bounds = [
        f"{symbol} {getattr(rule, name)}"
        for name, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"))
        for rule in field.metadata
        if getattr(rule, name, None) is not None
    ]
    kinds = {bool: "`true`, `false`", int: "integer", float: "number", Path: "path"}
    return ", ".join([kinds.get(kind, "text"), *bounds])


def _default(field: FieldInfo) -> str:
    value = field.default
    if value is None or value == "":
        return "(none)"
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def reference() -> str:
    """docs/configuration.md: one row per setting, from the class itself."""
    prefix = Settings.model_config.get("env_prefix", "")
    rows = [
        f"| `{(prefix + name).upper()}` | {_default(field)} | {_values(field)} | "
        f"{field.description} |"
        for name, field in Settings.model_fields.items()
    ]
    return REFERENCE_HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
