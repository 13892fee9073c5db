"""The public service's working parts, one per process: the client to the generator service,
this replica's work queue, its jobs, and what readiness reports."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import bentoml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from imagegen.inputs import Edit, InputLimits, read_edit
from imagegen.parameters import choose_model, resolve, series
from imagegen.schemas import (
    GenerationParameters,
    ImageRequest,
    ImagesRequest,
    JobAccepted,
    JobLinks,
    JobRequest,
    ModelInfo,
)
from imagegen.serving.encoding import image_response, images_response
from imagegen.serving.jobs.jobs import Job, Jobs, JobStore, links
from imagegen.serving.jobs.memory_store import MemoryJobStore
from imagegen.serving.jobs.webhooks import Webhooks
from imagegen.serving.lifetime import while_requested
from imagegen.serving.queue import Ticket, WorkQueue
from imagegen.serving.remote import Generated, GeneratorClient, generator_ready
from imagegen.serving.work_limit import WorkRateLimit
from imagegen.settings import Settings
from imagegen.work import work
from middleware.rate_limit import client_bucket


def owner(request: Request) -> str:
    """The id of the API key that made the request ("" with auth off): a job is visible to
    the key that submitted it and to no other."""
    return str(request.scope.get("state", {}).get("api_key_id") or "")


def job_store(settings: Settings) -> JobStore:
    """Redis when ``IMAGEGEN_REDIS_URL`` is set (several replicas), else this process."""
    if settings.redis_url:
        from imagegen.serving.jobs.redis_store import (
            RedisJobStore,  # only this backend needs the redis client
        )

        return RedisJobStore.connect(
            settings.redis_url, max_jobs=settings.max_jobs, ttl=settings.job_ttl
        )
    return MemoryJobStore(max_jobs=settings.max_jobs, ttl=settings.job_ttl)


class Gateway:
    def __init__(self, generator: Any, settings: Settings, store: JobStore) -> None:
        self.generator = generator
        self.client = GeneratorClient(generator)
        self.settings = settings
        self.input_limits = InputLimits(settings.max_input_pixels, settings.max_input_bytes)
        self.webhooks = Webhooks(settings.webhook_hosts, settings.webhook_secret)
        self.jobs = Jobs(store, timeout=settings.timeout, webhooks=self.webhooks)
        self.work_limit = (
            WorkRateLimit(settings.work_rate_limit, settings.limits_storage)
            if settings.work_rate_limit
            else None
        )
        self._infos: list[ModelInfo] | None = None
        self._queues: dict[str, WorkQueue] = {}

    async def models(self) -> list[ModelInfo]:
        """The loaded models, the default first: asked of the generator service once, when
        first needed (it may still be loading when this process starts)."""
        if self._infos is None:
            self._infos = await self.client.models()
        return self._infos

    async def queue(self, model: str | None = None) -> WorkQueue:
        """The queue of ``model`` (``name:version``; the default model's when None): each
        model has its own, with its own budget and measured rate."""
        infos = await self.models()
        info = choose_model(model, infos)
        if info.tag not in self._queues:
            self._queues[info.tag] = WorkQueue(
                self.client,
                max_request_work=info.max_request_work,
                max_wait_s=self.settings.max_queue_wait_s,
                model=info.tag,
            )
        return self._queues[info.tag]

    async def prepare(
        self, request: ImageRequest | ImagesRequest
    ) -> tuple[list[GenerationParameters], Edit | None]:
        """A request's images, defaults filled and its input image read (off the event loop:
        decoding a large image takes milliseconds)."""
        edit = None
        if request.image is not None:
            edit = await anyio.to_thread.run_sync(
                read_edit,
                request.image,
                request.mask,
                request.width,
                request.height,
                self.input_limits,
            )
        count = request.num_images if isinstance(request, ImagesRequest) else 1
        info = choose_model(request.model, await self.models())
        first = resolve(request, info, count=count, edit=edit)
        return series(first, count), edit

    async def admit(
        self,
        scope: Scope,
        batch: list[GenerationParameters],
        reported: bool = False,
        edit: Edit | None = None,
    ) -> tuple[WorkQueue, Ticket]:
        """Admission by work: the per-request budget, the work rate limit, the wait bound."""
        queue = await self.queue(batch[0].model)
        queue.check_budget(batch)
        if self.work_limit is not None:
            await self.work_limit.charge(client_bucket(scope), work(batch))
        return queue, queue.admit(batch, reported, edit)

    async def generate(
        self, request: ImageRequest | ImagesRequest, http_request: Request | None = None
    ) -> Generated:
        """A synchronous request's images, cancelled when its client leaves or its time is
        up; ``http_request`` is the current BentoML request when None."""
        batch, edit = await self.prepare(request)
        scope = (http_request or bentoml.Context().request).scope
        queue, ticket = await self.admit(scope, batch, edit=edit)
        return await while_requested(queue.run(ticket), self.settings.timeout, http_request)

    async def start_job(self, body: JobRequest, request: Request) -> Job:
        """Admit a job and start it."""
        if body.webhook is not None:
            self.webhooks.check(body.webhook)
        batch, edit = await self.prepare(body)
        queue, ticket = await self.admit(request.scope, batch, reported=True, edit=edit)
        fmt, quality, single = body.output_format, body.quality, body.num_images == 1

        def encode(generated: Generated) -> Response:
            if single:
                return image_response(generated, fmt, quality)
            return images_response(generated, fmt, quality)

        return await self.jobs.submit(
            queue, ticket, owner(request), batch, webhook=body.webhook, encode=encode
        )

    async def submit_job(self, body: JobRequest, request: Request) -> Response:
        """Admit a job and start it; 202 with where to follow it."""
        job = await self.start_job(body, request)
        accepted = JobAccepted(
            id=job.id,
            status=job.status,
            queue_position=job.queue_position or 0,
            links=JobLinks(**links(job.id)),
        )
        return JSONResponse(
            accepted.model_dump(mode="json"),
            status_code=202,
            headers={"Location": accepted.links.self},
        )

    async def ready(self) -> bool:
        """Ready once the models are loaded, and while each model's queue on this replica is
        within its bound (so a load balancer sends new work elsewhere)."""
        if not await generator_ready(self.generator):
            return False
        return not any(queue.full for queue in self._queues.values())
