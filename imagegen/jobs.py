"""Jobs: a generation submitted now and watched, fetched or cancelled later.

A job runs through the same :class:`~imagegen.queue.WorkQueue` as a synchronous request, on
the replica that accepted it (see the README for why), and lives in a :class:`JobStore`:
its record, its event log (what `GET /jobs/{id}/events` replays and follows) and, once it
has succeeded, its encoded result. A job belongs to the API key that submitted it; to any
other key it does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.responses import Response

from .errors import Cancelled, ServiceError, TimedOut
from .progress import Event
from .queue import Ticket, WorkQueue
from .remote import Generated
from .schemas import GenerationParameters, JobStatus, JobView, Progress

logger = logging.getLogger(__name__)

TERMINAL: frozenset[JobStatus] = frozenset({"succeeded", "failed", "cancelled"})
KEEPALIVE_S = 15.0


class StoreFull(ServiceError):
    status_code = 503


class JobGone(ServiceError):
    """The job existed, but its record and result have expired."""

    status_code = 410


class JobNotFound(ServiceError):
    status_code = 404


class JobConflict(ServiceError):
    status_code = 409


@dataclass
class StoredResult:
    """A succeeded job's answer, encoded once: what `/generate/image(s)` would have sent."""

    body: bytes
    media_type: str
    headers: dict[str, str]

    @classmethod
    def of(cls, response: Response) -> StoredResult:
        headers = {
            key: value
            for key, value in response.headers.items()
            if key not in ("content-length", "content-type")
        }
        return cls(bytes(response.body), response.media_type or "", headers)

    def response(self) -> Response:
        return Response(self.body, media_type=self.media_type, headers=self.headers)


@dataclass
class Job:
    id: str
    owner: str  # the API key's id; "" with auth off
    parameters: GenerationParameters
    num_images: int
    webhook: str | None = None
    status: JobStatus = "queued"
    step: int = 0
    steps: int = 0  # the scheduler's denoising iterations per image, once known
    fraction: float = 0.0
    queue_position: int | None = 0
    eta_s: float | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result: StoredResult | None = None

    def view(self) -> JobView:
        steps = self.steps or self.parameters.num_inference_steps
        return JobView(
            id=self.id,
            status=self.status,
            progress=Progress(step=self.step, steps=steps, fraction=round(self.fraction, 4)),
            eta_s=None if self.eta_s is None else round(self.eta_s, 2),
            queue_position=None if self.status in TERMINAL else self.queue_position,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            error=self.error,
            parameters=self.parameters,
        )


class JobStore(Protocol):
    """Where jobs live; one process's memory, or Redis for several replicas."""

    async def create(self, job: Job) -> None: ...
    async def get(self, job_id: str) -> Job | None: ...
    async def owner_of(self, job_id: str) -> str | None: ...
    async def save(self, job: Job) -> None: ...
    async def publish(self, job_id: str, event: str, data: dict[str, Any]) -> None: ...
    def follow(
        self, job_id: str, after: int
    ) -> AsyncIterator[tuple[int, str, dict[str, Any]] | None]: ...


@dataclass
class _Entry:
    job: Job
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    expired: bool = False


class MemoryJobStore:
    """Jobs in this process's memory: nothing to install, one replica.

    A finished job is kept ``ttl`` seconds; then its record and result are dropped and only a
    tombstone stays (for another ``ttl``), so its paths answer 410 rather than 404."""

    def __init__(self, *, max_jobs: int, ttl: float, clock: Callable[[], float] = time.time):
        self.max_jobs = max_jobs
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[str, _Entry] = {}

    def _prune(self) -> None:
        now = self.clock()
        for job_id, entry in list(self._entries.items()):
            finished = entry.job.finished_at
            if finished is None:
                continue
            if now - finished > 2 * self.ttl:
                del self._entries[job_id]
            elif now - finished > self.ttl and not entry.expired:
                entry.expired = True
                entry.job.result = None
                entry.events.clear()

    async def create(self, job: Job) -> None:
        self._prune()
        live = sum(not entry.expired for entry in self._entries.values())
        if live >= self.max_jobs:
            raise StoreFull(
                f"This server holds its limit of {self.max_jobs} jobs; retry when some have "
                "expired.",
                retry_after=60,
            )
        self._entries[job.id] = _Entry(job)

    async def get(self, job_id: str) -> Job | None:
        self._prune()
        entry = self._entries.get(job_id)
        if entry is None:
            return None
        if entry.expired:
            raise JobGone(f"Job {job_id} has expired; results are kept for {self.ttl:g} s.")
        return entry.job

    async def owner_of(self, job_id: str) -> str | None:
        entry = self._entries.get(job_id)
        return None if entry is None else entry.job.owner

    async def save(self, job: Job) -> None:
        entry = self._entries[job.id]
        entry.job = job
        entry.changed.set()
        entry.changed = asyncio.Event()

    async def publish(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        entry = self._entries[job_id]
        entry.events.append((event, data))
        entry.changed.set()
        entry.changed = asyncio.Event()

    async def follow(
        self, job_id: str, after: int
    ) -> AsyncIterator[tuple[int, str, dict[str, Any]] | None]:
        """Events numbered after ``after`` (from 1), waiting for new ones until the terminal
        one; None now and then while nothing happens (a keep-alive)."""
        position = after
        while True:
            entry = self._entries.get(job_id)
            if entry is None or entry.expired:
                return
            while position < len(entry.events):
                event, data = entry.events[position]
                position += 1
                yield position, event, data
                if event in TERMINAL:
                    return
            changed = entry.changed
            try:
                await asyncio.wait_for(changed.wait(), KEEPALIVE_S)
            except TimeoutError:
                yield None


class Jobs:
    """Submits, runs, cancels and shows this replica's jobs."""

    def __init__(self, store: JobStore, *, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self._running: dict[str, tuple[asyncio.Task[None], Ticket, WorkQueue]] = {}
        self._reasons: dict[str, str] = {}

    async def submit(
        self,
        queue: WorkQueue,
        owner: str,
        batch: list[GenerationParameters],
        *,
        webhook: str | None,
        encode: Callable[[Generated], Response],
    ) -> Job:
        ticket = queue.admit(batch, previews=True)
        job = Job(
            id=uuid.uuid4().hex,
            owner=owner,
            parameters=batch[0],
            num_images=len(batch),
            webhook=webhook,
            queue_position=queue.position(ticket),
            eta_s=queue.eta_s(ticket),
        )
        try:
            await self.store.create(job)
        except BaseException:
            queue.discard(ticket)
            raise
        await self.store.publish(job.id, "queued", {"queue_position": job.queue_position})
        task = asyncio.create_task(self._run(job, queue, ticket, encode))
        self._running[job.id] = (task, ticket, queue)
        return job

    async def find(self, owner: str, job_id: str) -> Job:
        """The job, as ``owner`` may see it: another key's job is not found."""
        if await self.store.owner_of(job_id) not in (owner,):
            raise JobNotFound(f"There is no job {job_id}.")
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"There is no job {job_id}.")
        running = self._running.get(job_id)
        if running is not None:
            _, ticket, queue = running
            job.queue_position = queue.position(ticket)
            job.eta_s = queue.eta_s(ticket)
        return job

    async def cancel(self, owner: str, job_id: str, reason: str = "cancelled by its client") -> Job:
        job = await self.find(owner, job_id)
        if job.status in TERMINAL:
            raise JobConflict(f"Job {job_id} has already {job.status}; there is nothing to cancel.")
        running = self._running.get(job_id)
        if running is not None:
            task = running[0]
            self._reasons[job_id] = reason
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return await self.find(owner, job_id)

    async def shut_down(self) -> None:
        """End every job of this replica: cancelled work, ``failed`` with reason shutdown."""
        for job_id, (task, _, _) in list(self._running.items()):
            self._reasons[job_id] = "shutdown"
            task.cancel()
        await asyncio.gather(
            *(task for task, _, _ in self._running.values()), return_exceptions=True
        )

    async def _run(
        self, job: Job, queue: WorkQueue, ticket: Ticket, encode: Callable[[Generated], Response]
    ) -> None:
        async def on_step(ticket: Ticket, event: Event) -> None:
            if job.status == "queued":
                job.status, job.started_at = "running", time.time()
            elif ticket.step == job.step:
                return  # another image of a step already reported
            job.step, job.steps, job.fraction = ticket.step, ticket.steps, ticket.fraction
            job.eta_s = queue.eta_s(ticket)
            await self.store.save(job)
            data: dict[str, Any] = {
                "step": job.step,
                "steps": job.steps,
                "fraction": round(job.fraction, 4),
                "eta_s": None if job.eta_s is None else round(job.eta_s, 2),
            }
            if ticket.preview is not None:
                data["preview"] = ticket.preview
            await self.store.publish(job.id, "progress", data)

        status: JobStatus
        try:
            async with asyncio.timeout(self.timeout - (time.time() - job.created_at)):
                generated = await queue.run(ticket, on_step)
            job.result = StoredResult.of(encode(generated))
            status, job.error = "succeeded", None
            job.step, job.fraction = ticket.steps, 1.0
        except asyncio.CancelledError:
            reason = self._reasons.pop(job.id, "cancelled")
            status = "failed" if reason == "shutdown" else "cancelled"
            job.error = reason
        except TimeoutError:
            status = "failed"
            job.error = TimedOut(
                f"The job took longer than {self.timeout:g} s; it was cancelled."
            ).message
        except Cancelled as error:
            status, job.error = "cancelled", error.message
        except ServiceError as error:
            status, job.error = "failed", error.message
        except Exception:
            logger.exception("job %s failed", job.id)
            status, job.error = "failed", "Image generation failed; the server log has the details."
        finally:
            self._running.pop(job.id, None)
        job.status, job.finished_at, job.eta_s = status, time.time(), None
        await self.store.save(job)
        terminal: dict[str, Any] = {"status": status}
        if job.error is not None:
            terminal["error"] = job.error
        await self.store.publish(job.id, status, terminal)
