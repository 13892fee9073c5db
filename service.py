"""Stable Diffusion behind HTTP: the pipeline is loaded once per process and kept in memory."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import bentoml
from bentoml import Context
from fastapi import FastAPI, Request
from PIL.Image import Image
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, Response, StreamingResponse

from app.direct_route import DirectRoute
from app.docs import docs_router
from app.logs import configure_logging
from app.playground import mount_playground
from app.stack import middleware_stack
from imagegen.direct_hop import DirectServer
from imagegen.engine.catalog import declared, open_direct_hop, with_models
from imagegen.engine.progress import Tracker
from imagegen.errors import answers_errors, answers_validation_errors
from imagegen.hop import CONNECTED, UpscaleItem
from imagegen.schemas import (
    ImageRequest,
    ImagesRequest,
    ImagesResponse,
    JobAccepted,
    JobRequest,
    JobView,
    ModelInfo,
    UpscaleRequest,
)
from imagegen.serving.compat.a1111 import A1111, a1111_router
from imagegen.serving.compat.controlnet import controlnet_router
from imagegen.serving.compat.openai import openai_router
from imagegen.serving.encoding import (
    build_answer,
    encode,
    image_response,
    images_response,
    off_the_loop,
    upscaled_response,
)
from imagegen.serving.gateway import Gateway, job_store, owner
from imagegen.serving.jobs.events import event_stream
from imagegen.serving.metrics import exposition
from imagegen.settings import get_settings
from imagegen.upscalers import UpscalerInfo
from middleware.auth import ApiKeys

settings = get_settings()
configure_logging(settings.log_level)
api_keys = ApiKeys.load(settings.api_keys, settings.api_keys_file)
# Made at import, so an unreachable Redis stops `bentoml serve` at once, with its message.
jobs_store = job_store(settings)

# Plain GET routes beside the BentoML APIs, matched before BentoML's own. FastAPI's docs pages
# would load scripts from a CDN, so they are off and /docs is served from local assets.
routes = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
answers_validation_errors(routes, statuses={"/sdapi/": 422, "/controlnet/": 422})


def current_request() -> Request:
    """The HTTP request a BentoML API is answering. (Not its `ctx` parameter: with one,
    BentoML overwrites the status of the error responses these handlers return.)"""
    return Context().request  # not `bentoml.Context`: an import at each lookup


# BentoML's own timeout and concurrency limit, looser than the stack's admission middleware
# (which answers in this service's error shape), stay as a backstop.
BACKSTOP = {"timeout": settings.timeout + 30, "max_concurrency": 2 * settings.max_concurrency}


@bentoml.service(
    name="imagegen-generator",
    traffic={"timeout": BACKSTOP["timeout"]},
    # One thread per model's batched API (imagegen.engine.catalog).
    threads=len(settings.model_tags),
    logging={"access": {"enabled": False}},
    tracing=settings.bentoml_tracing,
    # BentoML's client to a dependency replaces its connection pool every 100 requests or
    # 300 s by default, cutting the requests in flight on the old one (500s under load). This
    # service is on a local socket, so the pool never needs replacing.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 10.0**9},
)
@with_models(settings.model_tags, settings.batching)
class Generator:
    """Holds the diffusers pipelines; reached only through `ImageGeneration`. Each model's
    `generate_<name>` API (added by `with_models`, which also declares the model so `bentoml
    build` packs it) is where BentoML's adaptive batching merges concurrent requests (the
    dispatcher sits on the HTTP endpoint of a batchable API, so batching needs this second
    service)."""

    def __init__(self) -> None:
        # Imported here: only this service's process needs torch and diffusers.
        from imagegen.engine.compute import Lane
        from imagegen.engine.controlling import ControlNets
        from imagegen.engine.generation import load_runners
        from imagegen.engine.upscaling import Upscalers

        # One tracker for all models: one event stream, cancels by id.
        self.tracker = Tracker()
        # Opened on start-up where BentoML serves this service on a local socket.
        self.direct: DirectServer | None = None

        def load() -> None:
            self.upscaling = Upscalers(declared(self, "upscaler"), settings.device)
            controlnets = ControlNets(declared(self, "controlnet"), settings.device, settings.dtype)
            self.runners = load_runners(
                declared(self, "model"),
                settings,
                self.tracker,
                declared(self, "lora"),
                self.upscaling,
                controlnets,
            )

        # In a lane, as all of torch's work here: torch on this thread, which lives on, would
        # slow every call (imagegen.engine.compute). BentoML serves /readyz only once
        # __init__ has returned: loaded and warmed up.
        Lane("loading").submit(load).result()

    @bentoml.on_startup
    async def open_direct_hop(self) -> None:
        """Generation requests also taken on a local socket of this service's own, batched
        here (imagegen.direct_hop): the public process's short way round BentoML's hop."""
        self.direct = open_direct_hop(self.runners, settings.max_batch_size)

    @bentoml.on_shutdown
    async def close_direct_hop(self) -> None:
        if self.direct is not None:
            self.direct.close()

    # Async, so they answer at once while a pipeline call holds the sync APIs' thread.
    @bentoml.api
    async def cancel(self, ids: list[str]) -> None:
        """Stop these items: a queued one never starts, a running call stops at its next step
        once all its images are cancelled."""
        self.tracker.cancel(ids)

    @bentoml.api
    async def events(self) -> AsyncGenerator[str, None]:
        """Every reported step event as it happens, one JSON object per line, for as long as
        the caller listens; a first line says the stream is open."""
        yield json.dumps(CONNECTED) + "\n"
        async for event in self.tracker.stream():
            yield json.dumps(event) + "\n"

    @bentoml.api
    async def models(self) -> list[ModelInfo]:
        """The loaded models, the default first."""
        return [runner.model.info for runner in self.runners.values()]

    @bentoml.api
    async def upscalers(self) -> list[UpscalerInfo]:
        """The upscalers: built-in, then the stored networks."""
        return self.upscaling.infos

    @bentoml.api
    async def upscale(self, item: UpscaleItem) -> Image:
        """One image upscaled alone; `cancel` with its id stops it between tiles."""
        return await asyncio.wrap_future(self.upscaling.submit(item, self.tracker))


@bentoml.asgi_app(routes)
@bentoml.service(
    name="imagegen",
    traffic=BACKSTOP,
    # The access log middleware below writes the one access line per request.
    logging={"access": {"enabled": False}},
    # BentoML's HTTP metrics label each raw path (every job id, every unknown path a series
    # of its own): off (for both services; this one's settings are the server's), counted
    # by route template instead and served at /metrics (middleware/request_metrics.py).
    metrics={"enabled": False},
    tracing=settings.bentoml_tracing,
)
class ImageGeneration:
    """Text-to-image, image-to-image and inpainting with a diffusers pipeline."""

    generator = bentoml.depends(Generator)

    def __init__(self) -> None:
        self.gateway = Gateway(self.generator, settings, jobs_store)
        self.a1111 = A1111(self.gateway)

    async def __is_ready__(self) -> bool:
        return await self.gateway.ready()

    @bentoml.on_startup
    async def start(self) -> None:
        self.gateway.start()
        # anyio loads its asyncio backend on first use, ~100 ms of this loop's time on cpu-2:
        # now, rather than in the first request that needs a worker thread.
        await off_the_loop(lambda: None)

    @bentoml.on_shutdown
    async def end_jobs(self) -> None:
        await self.gateway.jobs.shut_down()

    # The handlers return starlette Responses, which BentoML sends as they are; the annotated
    # types document the 200 bodies for OpenAPI and tell BentoML's Python client how to decode.
    @bentoml.api(route="/generate/image", input_spec=ImageRequest)
    @answers_errors
    async def generate_image(self, **fields: Any) -> Image:
        """Generate one image: from noise, or from `image` (image-to-image) and `mask`
        (inpainting). Returns its bytes, with the seed used in `X-Seed` and the model in
        `X-Model`; a PNG carries the generation parameters in its `parameters` text chunk."""
        request = ImageRequest.model_construct(**fields)  # validated by the API's input model
        http_request = current_request()
        generated = await self.gateway.generate(request, http_request)
        answer = await build_answer(
            http_request.scope,
            generated,
            lambda: image_response(encode(generated, request.output_format, request.quality)),
        )
        return answer  # type: ignore[return-value]

    @bentoml.api(route="/generate/images", input_spec=ImagesRequest)
    @answers_errors
    async def generate_images(self, **fields: Any) -> ImagesResponse:
        """Generate `num_images` images, base64 in JSON, as one batch. Image k uses seed
        `seed + k`, so `/generate/image` with that seed regenerates it: byte-identical with
        batching off, within 1/255 per pixel with it on."""
        request = ImagesRequest.model_construct(**fields)
        http_request = current_request()
        generated = await self.gateway.generate(request, http_request)
        answer = await build_answer(
            http_request.scope,
            generated,
            lambda: images_response(encode(generated, request.output_format, request.quality)),
        )
        return answer  # type: ignore[return-value]

    @bentoml.api(route="/upscale", input_spec=UpscaleRequest)
    @answers_errors
    async def upscale(self, **fields: Any) -> Image:
        """Enlarge an image with an upscaler (`GET /upscalers`): a resize or a
        super-resolution network from the model store; nothing is redrawn. Returns its
        bytes; the upscaler in `X-Upscaler`."""
        request = UpscaleRequest.model_construct(**fields)
        upscaled = await self.gateway.upscale(request, current_request())
        answer = await off_the_loop(lambda: upscaled_response(upscaled, request))
        return answer  # type: ignore[return-value]

    @routes.get("/upscalers", tags=["Service APIs"])
    async def upscalers(self) -> list[UpscalerInfo]:
        """The upscalers `hires.upscaler` and `/upscale` may name: the built-in (by
        AUTOMATIC1111's names) and the networks in the model store."""
        return await self.gateway.upscalers()

    @routes.get("/metrics", include_in_schema=False)
    async def metrics(self) -> Response:
        """Prometheus' scrape: with auth on, it takes the metrics key (IMAGEGEN_METRICS_KEY)."""
        return Response(await off_the_loop(exposition), media_type=CONTENT_TYPE_LATEST)

    @routes.get("/models", tags=["Service APIs"])
    async def models(self) -> list[ModelInfo]:
        """The loaded models, the default first: family, defaults, schedulers, guidance,
        memory and work budget."""
        return await self.gateway.models()

    @routes.post(
        "/jobs",
        status_code=202,
        tags=["Jobs"],
        response_model=JobAccepted,
        responses={202: {"headers": {"Location": {"description": "The job's path."}}}},
    )
    @answers_errors
    async def submit_job(self, body: JobRequest, request: Request) -> Response:
        """Submit a generation and return at once; follow it at `links.events`, fetch it at
        `links.result`, cancel it with `DELETE`. Takes the body of `/generate/images`."""
        accepted = (await self.gateway.start_job(body, request)).accepted()
        return JSONResponse(
            accepted.model_dump(mode="json"),
            status_code=202,
            headers={"Location": accepted.links.self},
        )

    @routes.get("/jobs/{job_id}", tags=["Jobs"], response_model=JobView)
    @answers_errors
    async def job_status(self, job_id: str, request: Request) -> JobView:
        """A job's status, progress, estimated time left and queue position."""
        return (await self.gateway.jobs.find(owner(request), job_id)).view()

    @routes.get("/jobs/{job_id}/events", tags=["Jobs"])
    @answers_errors
    async def job_events(
        self, job_id: str, request: Request, preview: bool = False
    ) -> StreamingResponse:
        """Server-Sent Events: `queued`, `progress` (every denoising step; with
        `preview=true` a small preview PNG, base64), then `succeeded`, `failed` or
        `cancelled`, and the stream ends. `Last-Event-ID` resumes after that event."""
        jobs, key = self.gateway.jobs, owner(request)
        after = jobs.resumed_after(request.headers.get("last-event-id"))
        await jobs.find(key, job_id)
        return StreamingResponse(
            event_stream(jobs, key, job_id, after, preview),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @routes.get("/jobs/{job_id}/result", tags=["Jobs"])
    @answers_errors
    async def job_result(self, job_id: str, request: Request, image: int | None = None) -> Response:
        """One image: its bytes and headers as `/generate/image` sends them; several: the
        JSON of `/generate/images`, or with `image=k` image k's bytes alone. 409 until the
        job has succeeded, 410 once expired."""
        encoded = await self.gateway.jobs.result(owner(request), job_id, image)
        answer = image_response if len(encoded.images) == 1 else images_response
        return await off_the_loop(lambda: answer(encoded))

    @routes.delete("/jobs/{job_id}", tags=["Jobs"], response_model=JobView)
    @answers_errors
    async def cancel_job(self, job_id: str, request: Request) -> JobView:
        """Cancel a job: a queued one never starts, a running one stops within one denoising
        step. 409 once it has ended."""
        return (await self.gateway.jobs.cancel(owner(request), job_id)).view()


routes.include_router(docs_router(ImageGeneration, auth=bool(len(api_keys))))
routes.include_router(openai_router(lambda: bentoml.get_current_service().gateway))
routes.include_router(a1111_router(lambda: bentoml.get_current_service().a1111))
routes.include_router(controlnet_router(lambda: bentoml.get_current_service().gateway))
mount_playground(routes)


# `bentoml.asgi_app`'s annotations hide that the decorated class is a bentoml.Service.
service: Any = ImageGeneration
for middleware in middleware_stack(settings, api_keys):
    service.add_asgi_middleware(middleware.cls, *middleware.args, **middleware.kwargs)
# Innermost: the generation APIs answered without BentoML's API handling (app/direct_route.py).
service.add_asgi_middleware(
    DirectRoute, service=service, apis=["generate_image", "generate_images"]
)
