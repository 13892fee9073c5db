"""The public service's working parts, one per process: the client to the generator service,
this replica's work queue, its jobs, and what readiness reports."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .encoding import image_response, images_response
from .jobs import Job, JobConflict, Jobs, MemoryJobStore
from .lifetime import while_requested
from .parameters import resolve, series
from .queue import WorkQueue
from .remote import Generated, GeneratorClient, generator_ready
from .schemas import GenerationParameters, JobAccepted, JobLinks, JobRequest, ModelInfo
from .settings import Settings


def owner(request: Request) -> str:
    """The id of the API key that made the request ("" with auth off): a job is visible to
    the key that submitted it and to no other."""
    return str(request.scope.get("state", {}).get("api_key_id") or "")


def result_of(job: Job) -> Response:
    if job.status != "succeeded" or job.result is None:
        why = f" ({job.error})" if job.error else ""
        raise JobConflict(
            f"Job {job.id} is {job.status}{why}; its result exists once it has succeeded."
        )
    return job.result.response()


class Gateway:
    def __init__(self, generator: Any, settings: Settings) -> None:
        self.generator = generator
        self.client = GeneratorClient(generator)
        self.settings = settings
        self.jobs = Jobs(
            MemoryJobStore(max_jobs=settings.max_jobs, ttl=settings.job_ttl),
            timeout=settings.timeout,
        )
        self._info: ModelInfo | None = None
        self._queue: WorkQueue | None = None

    async def model_info(self) -> ModelInfo:
        """Asked of the generator service once, when first needed (it may still be loading
        when this process starts)."""
        if self._info is None:
            self._info = await self.client.model_info()
        return self._info

    async def queue(self) -> WorkQueue:
        if self._queue is None:
            info = await self.model_info()
            self._queue = WorkQueue(
                self.client,
                max_request_work=info.max_request_work,
                max_wait_s=self.settings.max_queue_wait_s,
            )
        return self._queue

    async def generate(self, batch: list[GenerationParameters]) -> Generated:
        """A synchronous request's images: admitted by work, and cancelled when its client
        leaves or its time is up."""
        queue = await self.queue()
        ticket = queue.admit(batch)
        return await while_requested(queue.run(ticket), self.settings.timeout)

    async def submit_job(self, body: JobRequest, owner: str) -> Response:
        """Admit a job and start it; 202 with where to follow it."""
        first = resolve(body, await self.model_info(), count=body.num_images)
        fmt, quality, single = body.output_format, body.quality, body.num_images == 1

        def encode(generated: Generated) -> Response:
            if single:
                return image_response(generated, fmt, quality)
            return images_response(generated, fmt, quality)

        job = await self.jobs.submit(
            await self.queue(),
            owner,
            series(first, body.num_images),
            webhook=body.webhook,
            encode=encode,
        )
        path = f"/jobs/{job.id}"
        accepted = JobAccepted(
            id=job.id,
            status=job.status,
            queue_position=job.queue_position or 0,
            links=JobLinks(self=path, events=f"{path}/events", result=f"{path}/result"),
        )
        return JSONResponse(
            accepted.model_dump(mode="json"), status_code=202, headers={"Location": path}
        )

    async def ready(self) -> bool:
        """Ready once the model is loaded, and while this replica's queue is within its
        bound (so a load balancer sends new work elsewhere)."""
        if not await generator_ready(self.generator):
            return False
        return self._queue is None or not self._queue.full
