"""Stable Diffusion behind HTTP: the pipeline is loaded once per process and kept in memory."""

from __future__ import annotations

import logging
from typing import Any

import bentoml
from fastapi import FastAPI
from PIL.Image import Image

from imagegen.docs import docs_router
from imagegen.encoding import image_response
from imagegen.errors import ServiceError
from imagegen.schemas import ImageRequest, ModelInfo
from imagegen.settings import get_settings
from models.store import StoredPipeline

settings = get_settings()
# BentoML leaves the root logger at WARNING; this project's own INFO lines (model loading,
# store writes) are worth keeping.
for package in ("imagegen", "models"):
    logging.getLogger(package).setLevel(settings.log_level)

# Plain GET routes beside the BentoML APIs, matched before BentoML's own. FastAPI's docs pages
# would load scripts from a CDN, so they are off and /docs is served from local assets.
routes = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.service(
    name="imagegen",
    traffic={"timeout": settings.timeout, "max_concurrency": settings.max_concurrency},
)
@bentoml.asgi_app(routes)
class ImageGeneration:
    """Text-to-image generation with a diffusers pipeline."""

    # Declared here so `bentoml build` packs it; resolving it builds sd-tiny on first use.
    model = StoredPipeline(settings.model)

    def __init__(self) -> None:
        from imagegen.generation import ImageGenerator
        from models.loading import load_model

        self.ready = False
        self.generator = ImageGenerator(
            load_model(self.model, device=settings.device, dtype=settings.dtype)
        )
        if settings.warmup:
            self.generator.warm_up()
        self.ready = True

    def __is_ready__(self) -> bool:
        return self.ready

    @bentoml.api(route="/generate/image", input_spec=ImageRequest)
    def generate_image(self, **fields: Any) -> Image:
        """Generate one image. Returns its bytes, with the seed used in `X-Seed` and the model
        in `X-Model`; a PNG carries the generation parameters in its `parameters` text chunk."""
        request = ImageRequest.model_construct(**fields)  # validated by BentoML already
        try:
            parameters = self.generator.resolve(request)
            image = self.generator.generate(parameters)
        except ServiceError as error:
            return error.to_response()  # type: ignore[return-value]
        # BentoML sends a Response as it is; `Image` above documents the 200 body for OpenAPI
        # and tells BentoML's Python client to decode it.
        return image_response(image, parameters, request.output_format, request.quality)  # type: ignore[return-value]

    @routes.get("/models", tags=["Service APIs"])
    def models(self) -> list[ModelInfo]:
        """The loaded models, their defaults and the schedulers they accept."""
        return [self.generator.model.info]


routes.include_router(docs_router(ImageGeneration))
