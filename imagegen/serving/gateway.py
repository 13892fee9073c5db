"""The public service's working parts, one per process: the client to the generator service,
one work queue per model, this replica's jobs, and what readiness reports. It knows requests,
not HTTP: the routes build the answers."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio.to_thread
from starlette.requests import Request

from imagegen.controls import ControlInput, Controls, read_controls
from imagegen.errors import InvalidField, TooMuchWork
from imagegen.hop import UpscaleItem
from imagegen.inputs import WHITE, Edit, InputLimits, pack, read_edit, read_image, upscaled_size
from imagegen.parameters import active_controls, choose_model, resolve, series
from imagegen.schemas import (
    GenerationParameters,
    ImageRequest,
    ImagesRequest,
    JobRequest,
    ModelInfo,
    UpscaleRequest,
)
from imagegen.serving.batching_warmup import teach_batching
from imagegen.serving.follower import EventFollower
from imagegen.serving.jobs.jobs import Job, Jobs, JobStore, StoreLimits
from imagegen.serving.jobs.links import Links
from imagegen.serving.jobs.memory_store import MemoryJobStore
from imagegen.serving.jobs.webhooks import Webhooks
from imagegen.serving.lifetime import while_requested
from imagegen.serving.queue import Listener, Ticket, WorkQueue
from imagegen.serving.remote import Generated, GeneratorClient, Upscaled, generator_ready
from imagegen.serving.work_limit import WorkRateLimit
from imagegen.settings import Settings
from imagegen.upscalers import UpscalerInfo, covering, upscale_work
from imagegen.work import DECODE_WORK
from middleware.paths import client_bucket
from middleware.timing import record

logger = logging.getLogger(__name__)
# How often start-up asks whether the generator service has loaded its models.
LOADING_POLL_S = 0.5


def owner(request: Request) -> str:
    """The id of the API key that made the request ("" with auth off): a job is visible to
    the key that submitted it and to no other."""
    return str(request.scope.get("state", {}).get("api_key_id") or "")


def job_store(settings: Settings) -> JobStore:
    """Redis when ``IMAGEGEN_REDIS_URL`` is set (several replicas), else this process."""
    limits = StoreLimits(
        max_jobs=settings.max_jobs,
        max_jobs_per_owner=settings.max_jobs_per_key,
        max_result_bytes=settings.max_result_bytes,
        max_result_bytes_per_owner=settings.max_result_bytes_per_key,
    )
    if settings.redis_url:
        from imagegen.serving.jobs.redis_store import (
            RedisJobStore,  # only this backend needs the redis client
        )

        return RedisJobStore.connect(settings.redis_url, limits, ttl=settings.job_ttl)
    return MemoryJobStore(limits, ttl=settings.job_ttl)


@dataclass(frozen=True)
class Prepared:
    """A request made ready once: its model, its images (defaults filled, seeds in series)
    and its input image, read."""

    model: ModelInfo
    batch: list[GenerationParameters]
    edit: Edit | None
    controls: Controls


def read_inputs(
    request: ImageRequest, native: tuple[int, int], limits: InputLimits
) -> tuple[Edit | None, Controls]:
    """A request's input image and mask, and its active control images (those that guide)
    drawn at the output size (the edit's; else the asked size, a blank side the model's
    ``native`` one)."""
    edit = None
    if request.image is not None:
        edit = read_edit(request.image, request.mask, request.width, request.height, limits)
    size = (
        (edit.width, edit.height)
        if edit
        else (request.width or native[0], request.height or native[1])
    )
    # Every control image is checked, one left out (scale 0) as much as the others.
    read = read_controls(
        [(f"controlnets[{i}]", control_input(c)) for i, c in enumerate(request.controlnets)],
        size,
        limits,
    )
    active = [index for index, _ in active_controls(request)]
    return edit, Controls([read.maps[i] for i in active], [read.digests[i] for i in active])


def control_input(control: Any) -> ControlInput:
    return ControlInput(
        image=control.image,
        module=control.module,
        threshold_a=control.threshold_a,
        threshold_b=control.threshold_b,
        resize_mode=control.resize_mode,
        resolution=control.processor_res,
    )


class Gateway:
    def __init__(self, generator: Any, settings: Settings, store: JobStore) -> None:
        self.generator = generator
        self.client = GeneratorClient(generator)
        # One stream of step events for every model's queue on this replica.
        self.follower = EventFollower(self.client)
        self.settings = settings
        self.input_limits = InputLimits(settings.max_input_pixels, settings.max_input_bytes)
        self.webhooks = Webhooks(settings.webhook_hosts, settings.webhook_secret)
        self.jobs = Jobs(store, timeout=settings.timeout, webhooks=self.webhooks)
        self.links = Links(settings.url_secret, settings.job_ttl)
        self.work_limit = (
            WorkRateLimit(settings.work_rate_limit, settings.limits_storage)
            if settings.work_rate_limit
            else None
        )
        self._infos: list[ModelInfo] | None = None
        self._upscalers: list[UpscalerInfo] | None = None
        self._queues: dict[str, WorkQueue] = {}
        self._teaching: asyncio.Task[None] | None = None

    def start(self) -> None:
        """At the process's start, on its event loop: once the generator service has loaded,
        teach its batching queues their timings (served, batching on, warm-up on, and
        generations through BentoML's hop: the short way batches without learning), in the
        background; readiness waits for it."""
        settings = self.settings
        through_bentoml = self.client.served and self.client.direct is None
        if through_bentoml and settings.max_batch_size > 1 and settings.warmup:
            self._teaching = asyncio.create_task(self._teach())

    async def _teach(self) -> None:
        try:
            while not await generator_ready(self.generator):
                await asyncio.sleep(LOADING_POLL_S)
            await teach_batching(self.client, await self.models())
        except Exception:  # served untaught rather than never ready
            logger.exception("could not teach adaptive batching its timings")

    async def models(self) -> list[ModelInfo]:
        """The loaded models, the default first: asked of the generator service once, when
        first needed (it may still be loading when this process starts)."""
        if self._infos is None:
            self._infos = await self.client.models()
        return self._infos

    async def model(self, name: str | None) -> ModelInfo:
        """The loaded model ``name`` (``name[:version]``; the default when None)."""
        return choose_model(name, await self.models())

    def queue(self, info: ModelInfo) -> WorkQueue:
        """The model's queue: each has its own, with its own budget and measured rate."""
        if info.tag not in self._queues:
            self._queues[info.tag] = WorkQueue(
                self.client,
                max_request_work=info.max_request_work,
                max_wait_s=self.settings.max_queue_wait_s,
                model=info.tag,
                follower=self.follower,
            )
        return self._queues[info.tag]

    async def prepare(self, request: ImageRequest | ImagesRequest) -> Prepared:
        """The request's model, images, input image and control images (read off the event
        loop: decoding and preprocessing a large image takes milliseconds; a prompt alone
        spares the thread hop)."""
        count = request.num_images if isinstance(request, ImagesRequest) else 1
        info = await self.model(request.model)
        native = (info.native_width, info.native_height)
        read = partial(read_inputs, request, native, self.input_limits)
        has_images = request.image is not None or bool(request.controlnets)
        edit, controls = await anyio.to_thread.run_sync(read) if has_images else read()
        first = resolve(request, info, count, edit, controls.digests)
        return Prepared(info, series(first, count), edit, controls)

    async def admit(self, request: ImageRequest | ImagesRequest, http_request: Request) -> Ticket:
        """Admission by work: the per-request budget and the wait bound (the model's queue),
        then the work rate limit of the client; refused by one, charged by none after it.
        Timed as ``admission`` in the request's ``Server-Timing``."""
        started = time.perf_counter()
        prepared = await self.prepare(request)
        ticket = self.queue(prepared.model).admit(
            prepared.batch, prepared.edit, prepared.controls.maps
        )
        if self.work_limit is not None:
            try:
                await self.work_limit.charge(client_bucket(http_request.scope), ticket.work)
            except BaseException:
                ticket.discard()
                raise
        record(http_request.scope, "admission", time.perf_counter() - started)
        return ticket

    async def wait(
        self, ticket: Ticket, http_request: Request, listener: Listener | None = None
    ) -> Generated:
        """``ticket``'s images, cancelled when the client leaves or its time is up."""
        return await while_requested(ticket.run(listener), self.settings.timeout, http_request)

    async def generate(
        self, request: ImageRequest | ImagesRequest, http_request: Request
    ) -> Generated:
        """A synchronous request's images."""
        return await self.wait(await self.admit(request, http_request), http_request)

    async def start_job(self, body: JobRequest, http_request: Request) -> Job:
        """Admit a job and start it."""
        if body.webhook is not None:
            self.webhooks.check(body.webhook)
        ticket = await self.admit(body, http_request)
        ticket.previews = body.preview
        return await self.jobs.submit(
            ticket,
            owner(http_request),
            webhook=body.webhook,
            output_format=body.output_format,
            quality=body.quality,
        )

    async def upscalers(self) -> list[UpscalerInfo]:
        """The upscalers, asked of the generator service once."""
        if self._upscalers is None:
            self._upscalers = await self.client.upscalers()
        return self._upscalers

    async def upscale(self, request: UpscaleRequest, http_request: Request) -> Upscaled:
        """An image upscaled alone: read and bounded as an edit's input, its output size
        bounded, its work charged to the client's rate like a generation's."""
        names = [info.name for info in await self.upscalers() if info.kind != "latent"]
        if request.upscaler not in names:
            raise InvalidField(
                f"`upscaler` must be one of {', '.join(names)}, but is {request.upscaler!r}.",
                field="upscaler",
            )
        image, _ = await anyio.to_thread.run_sync(
            read_image, request.image, "image", self.input_limits, WHITE
        )
        width, height = upscaled_size(image.size, request.scale, request.width, request.height)
        made = covering(image.size, (width, height)) if request.crop else (width, height)
        work = upscale_work(request.upscaler, *made) + DECODE_WORK * made[0] * made[1] / 1e6
        budget = (await self.models())[0].max_request_work
        if work > budget:
            raise TooMuchWork(
                f"This upscale asks for {work:.1f} megapixel-steps of work, over the limit of "
                f"{budget:g} per request: ask for a smaller size or a cheaper upscaler."
            )
        if self.work_limit is not None:
            await self.work_limit.charge(client_bucket(http_request.scope), work)
        packed = await anyio.to_thread.run_sync(pack, image)
        item = UpscaleItem(
            id=uuid.uuid4().hex,
            image=packed,
            width=width,
            height=height,
            upscaler=request.upscaler,
            crop=request.crop,
        )
        return await while_requested(self.client.upscale(item), self.settings.timeout, http_request)

    async def ready(self) -> bool:
        """Ready once the models are loaded, and while each model's queue on this replica is
        within its bound (so a load balancer sends new work elsewhere)."""
        if not await generator_ready(self.generator):
            return False
        if self._teaching is not None and not self._teaching.done():
            return False
        return not any(queue.full for queue in self._queues.values())
