"""Stable Diffusion behind HTTP: the pipeline is loaded once per process and kept in memory."""

from __future__ import annotations

import functools
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
from imagegen.remote import generate, generator_ready
from imagegen.schemas import (
    GenerationParameters,
    ImageRequest,
    ImagesRequest,
    ImagesResponse,
    ModelInfo,
)
from imagegen.settings import get_settings
from imagegen.stack import middleware_stack
from middleware.auth import ApiKeys
from models.store import StoredPipeline

settings = get_settings()
configure_logging(settings.log_level)
api_keys = ApiKeys.load(settings.api_keys, settings.api_keys_file)

# Plain GET routes beside the BentoML APIs, matched before BentoML's own. FastAPI's docs pages
# would load scripts from a CDN, so they are off and /docs is served from local assets.
routes = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


# BentoML's own timeout and concurrency limit, looser than the stack's admission middleware
# (which answers in this service's error shape), stay as a backstop.
BACKSTOP = {"timeout": settings.timeout + 30, "max_concurrency": 2 * settings.max_concurrency}


@bentoml.service(
    name="imagegen-generator",
    traffic={"timeout": BACKSTOP["timeout"]},
    logging={"access": {"enabled": False}},
    # BentoML's client to a dependency replaces its connection pool every 100 requests or
    # 300 s by default, cutting the requests in flight on the old one (500s under load). This
    # service is on a local socket, so the pool never needs replacing.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 10.0**9},
)
class Generator:
    """Holds the diffusers pipeline; reached only through `ImageGeneration`. Its `generate` API
    is where BentoML's adaptive batching merges concurrent requests (the dispatcher sits on
    the HTTP endpoint of a batchable API, so batching needs this second service)."""

    # Declared here so `bentoml build` packs it; resolving it builds sd-tiny on first use.
    model = StoredPipeline(settings.model)

    def __init__(self) -> None:
        # Imported here: only this service's process needs torch and diffusers.
        from imagegen.generation import PipelineRunner, load_runner

        # BentoML serves /readyz only once __init__ has returned: loaded and warmed up.
        self.runner: PipelineRunner = load_runner(self.model, settings)

    @bentoml.api(**settings.batching)
    def generate(self, batch: list[GenerationParameters]) -> list[Generation | Failure]:
        """One outcome per item: its image, or the failure of its pipeline call."""
        return self.runner.generate_batch(batch)

    @bentoml.api
    def model_info(self) -> ModelInfo:
        return self.runner.model.info


@bentoml.asgi_app(routes)
@bentoml.service(
    name="imagegen",
    traffic=BACKSTOP,
    # Handlers wait on the generator service; one thread per admitted request lets concurrent
    # requests reach its batching together.
    threads=settings.max_concurrency,
    # The access log middleware below writes the one access line per request.
    logging={"access": {"enabled": False}},
)
class ImageGeneration:
    """Text-to-image generation with a diffusers pipeline."""

    generator = bentoml.depends(Generator)

    async def __is_ready__(self) -> bool:
        return await generator_ready(self.generator)

    @functools.cached_property
    def model_info(self) -> ModelInfo:
        return self.generator.model_info()

    # The handlers return starlette Responses, which BentoML sends as they are; the annotated
    # types document the 200 bodies for OpenAPI and tell BentoML's Python client how to decode.
    @bentoml.api(route="/generate/image", input_spec=ImageRequest)
    @answers_errors
    def generate_image(self, **fields: Any) -> Image:
        """Generate one image. Returns its bytes, with the seed used in `X-Seed` and the model
        in `X-Model`; a PNG carries the generation parameters in its `parameters` text chunk."""
        request = ImageRequest.model_construct(**fields)  # validated by BentoML already
        generated = generate(self.generator, [resolve(request, self.model_info)])
        return image_response(generated, request.output_format, request.quality)  # type: ignore[return-value]

    @bentoml.api(route="/generate/images", input_spec=ImagesRequest)
    @answers_errors
    def generate_images(self, **fields: Any) -> ImagesResponse:
        """Generate `num_images` images, base64 in JSON, as one batch. Image k uses seed
        `seed + k`, so `/generate/image` with that seed regenerates it: byte-identical with
        batching off, within 1/255 per pixel with it on."""
        request = ImagesRequest.model_construct(**fields)
        first = resolve(request, self.model_info, count=request.num_images)
        generated = generate(self.generator, series(first, request.num_images))
        return images_response(generated, request.output_format, request.quality)  # type: ignore[return-value]

    @routes.get("/models", tags=["Service APIs"])
    def models(self) -> list[ModelInfo]:
        """The loaded models, their defaults and the schedulers they accept."""
        return [self.model_info]


routes.include_router(docs_router(ImageGeneration, auth=bool(len(api_keys))))


# `bentoml.asgi_app`'s annotations hide that the decorated class is a bentoml.Service.
service: Any = ImageGeneration
for middleware in middleware_stack(settings, api_keys):
    service.add_asgi_middleware(middleware.cls, *middleware.args, **middleware.kwargs)
