"""Stable Diffusion behind HTTP: the pipeline is loaded once per process and kept in memory."""

from __future__ import annotations

import functools
import logging
from typing import Any

import bentoml
from fastapi import FastAPI
from PIL.Image import Image

from imagegen.docs import docs_router
from imagegen.encoding import image_response, images_response
from imagegen.errors import answers_errors
from imagegen.logs import configure_logging
from imagegen.outcomes import Failure, Generation
from imagegen.parameters import resolve, series
from imagegen.rendering import pipeline_ready, render
from imagegen.schemas import (
    GenerationParameters,
    ImageRequest,
    ImagesRequest,
    ImagesResponse,
    ModelInfo,
)
from imagegen.settings import Settings, get_settings
from middleware.access_log import AccessLogMiddleware
from middleware.auth import PUBLIC_PATHS, ApiKeyAuthMiddleware, ApiKeys
from middleware.body_limit import BodyLimitMiddleware
from middleware.rate_limit import RateLimitMiddleware
from middleware.request_id import RequestIdMiddleware
from middleware.timing import TimingMiddleware
from models.store import StoredPipeline

settings = get_settings()
configure_logging(settings.log_level)
logger = logging.getLogger("imagegen.service")
api_keys = ApiKeys.load(settings.api_keys, settings.api_keys_file)

# Plain GET routes beside the BentoML APIs, matched before BentoML's own. FastAPI's docs pages
# would load scripts from a CDN, so they are off and /docs is served from local assets.
routes = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.service(
    name="imagegen-pipeline",
    traffic={"timeout": settings.timeout},
    logging={"access": {"enabled": False}},
    # BentoML's client to a dependency replaces its connection pool every 100 requests or
    # 300 s by default, cutting the requests in flight on the old one (500s under load). This
    # service is on a local socket, so the pool never needs replacing.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 10.0**9},
)
class Pipeline:
    """Holds the diffusers pipeline; reached only through `ImageGeneration`. Its `render` API
    is where BentoML's adaptive batching merges concurrent requests (the dispatcher sits on
    the HTTP endpoint of a batchable API, so batching needs this second service)."""

    # Declared here so `bentoml build` packs it; resolving it builds sd-tiny on first use.
    model = StoredPipeline(settings.model)

    def __init__(self) -> None:
        # Imported here: only this service's process needs torch and diffusers.
        from imagegen.generation import ImageGenerator
        from models.loading import load_model

        self.ready = False
        self.generator = ImageGenerator(
            load_model(self.model, settings), max_batch_size=settings.max_batch_size
        )
        if settings.warmup:
            self.generator.warm_up(settings.warmup_shapes)
        self.ready = True

    def __is_ready__(self) -> bool:
        return self.ready

    @bentoml.api(**settings.batching)
    def render(self, batch: list[GenerationParameters]) -> list[Generation | Failure]:
        """One outcome per item: its image, or the failure of its pipeline call."""
        return self.generator.generate_batch(batch)

    @bentoml.api
    def model_info(self) -> ModelInfo:
        return self.generator.model.info


@bentoml.asgi_app(routes)
@bentoml.service(
    name="imagegen",
    traffic={"timeout": settings.timeout, "max_concurrency": settings.max_concurrency},
    # Handlers wait on the pipeline service; one thread per admitted request lets concurrent
    # requests reach its batching together.
    threads=settings.max_concurrency,
    # The access log middleware below writes the one access line per request.
    logging={"access": {"enabled": False}},
)
class ImageGeneration:
    """Text-to-image generation with a diffusers pipeline."""

    pipeline = bentoml.depends(Pipeline)

    async def __is_ready__(self) -> bool:
        return await pipeline_ready(self.pipeline)

    @functools.cached_property
    def model_info(self) -> ModelInfo:
        return self.pipeline.model_info()

    # The handlers return starlette Responses, which BentoML sends as they are; the annotated
    # types document the 200 bodies for OpenAPI and tell BentoML's Python client how to decode.
    @bentoml.api(route="/generate/image", input_spec=ImageRequest)
    @answers_errors
    def generate_image(self, **fields: Any) -> Image:
        """Generate one image. Returns its bytes, with the seed used in `X-Seed` and the model
        in `X-Model`; a PNG carries the generation parameters in its `parameters` text chunk."""
        request = ImageRequest.model_construct(**fields)  # validated by BentoML already
        rendering = render(self.pipeline, [resolve(request, self.model_info)])
        return image_response(rendering, request.output_format, request.quality)  # type: ignore[return-value]

    @bentoml.api(route="/generate/images", input_spec=ImagesRequest)
    @answers_errors
    def generate_images(self, **fields: Any) -> ImagesResponse:
        """Generate `num_images` images, base64 in JSON, as one batch. Image k uses seed
        `seed + k`, so `/generate/image` with that seed regenerates it: byte-identical with
        batching off, within 1/255 per pixel with it on."""
        request = ImagesRequest.model_construct(**fields)
        first = resolve(request, self.model_info, count=request.num_images)
        rendering = render(self.pipeline, series(first, request.num_images))
        return images_response(rendering, request.output_format, request.quality)  # type: ignore[return-value]

    @routes.get("/models", tags=["Service APIs"])
    def models(self) -> list[ModelInfo]:
        """The loaded models, their defaults and the schedulers they accept."""
        return [self.model_info]


routes.include_router(docs_router(ImageGeneration, auth=bool(len(api_keys))))


def mount_middlewares(service: Any, settings: Settings, api_keys: ApiKeys) -> None:
    """Outermost first. BentoML runs its metrics, tracing, timeout (504) and max-concurrency
    (429) middlewares outside these, and CORS inside them (so preflights pass auth as public).

    1. access log: sees the final status and bytes of everything inside, the request id and
       the key id auth records;
    2. request id: set before anything else logs, added to every JSON error body;
    3. timing: `total` covers auth, limits and the handler;
    4. auth, then 5. the per-key rate limit, which needs the key id;
    6. body limit, innermost: clients refused above never get to send a large body.
    """
    service.add_asgi_middleware(AccessLogMiddleware, log_prompts=settings.log_prompts)
    service.add_asgi_middleware(RequestIdMiddleware)
    service.add_asgi_middleware(TimingMiddleware)
    if len(api_keys):
        service.add_asgi_middleware(ApiKeyAuthMiddleware, keys=api_keys)
    else:
        logger.warning(
            "no API keys configured (IMAGEGEN_API_KEYS, IMAGEGEN_API_KEYS_FILE): auth is off"
        )
    if settings.rate_limit:
        service.add_asgi_middleware(
            RateLimitMiddleware, rate=settings.rate_limit, exempt_paths=PUBLIC_PATHS
        )
    service.add_asgi_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)


mount_middlewares(ImageGeneration, settings, api_keys)
