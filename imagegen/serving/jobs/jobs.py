"""Jobs: a generation submitted now and watched, fetched or cancelled later.

A job runs through the same :class:`~imagegen.serving.queue.WorkQueue` as a synchronous
request, on the replica that accepted it (docs/jobs.md says why), and lives in a
:class:`JobStore` that any replica can read: its record, its event log (what
`GET /jobs/{id}/events` replays and follows) and, once it has succeeded, its encoded images.
A job belongs to the API key that submitted it; to any other key it does not exist.

The replica running a job holds a lease on it, renewed every few seconds; a job whose lease
has lapsed (its replica died) is ended ``failed`` by whichever replica next looks at it, so no
job stays ``running`` for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from imagegen.errors import (
    Cancelled,
    InvalidField,
    JobConflict,
    JobGone,
    JobNotFound,
    RateLimited,
    ServiceError,
    StoreFull,
)
from imagegen.field_errors import shown
from imagegen.hop import Event
from imagegen.schemas import (
    MAX_PREVIEWS,
    GenerationParameters,
    JobAccepted,
    JobLinks,
    JobStatus,
    JobView,
    OutputFormat,
    Progress,
)
from imagegen.serving.encoding import Encoded, encode, off_the_loop
from imagegen.serving.jobs.webhooks import Webhooks
from imagegen.serving.queue import Ticket

logger = logging.getLogger(__name__)

TERMINAL: frozenset[JobStatus] = frozenset({"succeeded", "failed", "cancelled"})
LEASE_S = 10.0  # a replica that has not renewed its leases for this long is taken for dead
RENEW_S = 3.0
# How long `DELETE` waits for another replica to stop a job it runs.
REMOTE_CANCEL_WAIT_S = 10.0
LOST = "the replica running it stopped before it ended (its lease lapsed)"


# What a webhook is told: enough to fetch the rest with the key, nothing of the images.
NOTIFIED = {"id", "status", "error", "created_at", "finished_at"}


def links(job_id: str) -> dict[str, str]:
    path = f"/jobs/{job_id}"
    return {"self": path, "events": f"{path}/events", "result": f"{path}/result"}


class Job(BaseModel):
    """A job's record, as stored."""

    id: str
    owner: str  # the API key's id; "" with auth off
    parameters: GenerationParameters
    num_images: int
    webhook: str | None = None
    status: JobStatus = "queued"
    step: int = 0
    steps: int = 0  # the scheduler's denoising iterations per image, once known
    current_pass: int = 1
    fraction: float = 0.0
    queue_position: int | None = 0
    eta_s: float | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    error_field: str | None = None

    def accepted(self) -> JobAccepted:
        """What `POST /jobs` answers."""
        return JobAccepted(
            id=self.id,
            status=self.status,
            queue_position=self.queue_position or 0,
            links=JobLinks(**links(self.id)),
        )

    def view(self) -> JobView:
        return JobView(
            id=self.id,
            status=self.status,
            progress=Progress(
                step=self.step,
                steps=self.steps or self.parameters.all_steps,
                current_pass=self.current_pass,
                fraction=round(self.fraction, 4),
            ),
            eta_s=None if self.eta_s is None else round(self.eta_s, 2),
            queue_position=None if self.status in TERMINAL else self.queue_position,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            error=self.error,
            error_field=self.error_field,
            parameters=self.parameters,
        )


@dataclass(frozen=True)
class StoreLimits:
    """What a job store holds at most, in total and per owner (an API key; with auth off,
    owner "", the totals alone apply): jobs (unexpired, any status), and bytes of stored
    results. Past a bytes bound the oldest finished results go first, early (their paths
    answer 410), so new work is never refused for old results."""

    max_jobs: int
    max_jobs_per_owner: int | None = None
    max_result_bytes: int | None = None
    max_result_bytes_per_owner: int | None = None


def check_room(limits: StoreLimits, held: int, owners: int, owner: str) -> None:
    """Refuse a new job when the store holds ``max_jobs`` (503: the service is full) or its
    owner ``max_jobs_per_owner`` (429: that key is)."""
    if held >= limits.max_jobs:
        raise StoreFull(
            f"This service holds its limit of {limits.max_jobs} jobs; retry when some have "
            "expired.",
            retry_after=60,
        )
    if owner and limits.max_jobs_per_owner is not None and owners >= limits.max_jobs_per_owner:
        raise RateLimited(
            f"This API key holds its limit of {limits.max_jobs_per_owner} jobs "
            "(`IMAGEGEN_MAX_JOBS_PER_KEY`); retry when some have expired.",
            retry_after=60,
        )


def over_bytes(limits: StoreLimits, total: int, owners: int, owner: str) -> tuple[bool, bool]:
    """Whether stored results are over the total bound, and over ``owner``'s."""
    per_owner = limits.max_result_bytes_per_owner
    return (
        limits.max_result_bytes is not None and total > limits.max_result_bytes,
        bool(owner) and per_owner is not None and owners > per_owner,
    )


def kept_preview(step: int, steps: int) -> bool:
    """Whether a step's preview is kept: at most ``MAX_PREVIEWS`` a job, spread over its
    steps, the last one always."""
    stride = max(1, -(-steps // MAX_PREVIEWS))  # ceiling
    return step == steps or step % stride == 0


# One stored event: its id (what `Last-Event-ID` names), its name and its data.
StoredEvent = tuple[str, str, dict[str, Any]]


class JobStore(Protocol):
    """Where jobs live: this process's memory, or Redis shared by several replicas. A
    finished job's result and events are kept ``ttl`` seconds, its record twice as long (so
    its paths say 410, not 404)."""

    ttl: float
    event_ids: re.Pattern[str]  # the shape of the ids `follow` gives its events

    async def create(self, job: Job) -> None: ...
    async def get(self, job_id: str) -> Job | None: ...
    async def save(self, job: Job) -> None: ...
    async def save_result(self, job_id: str, result: Encoded) -> None:
        """Keep a succeeded job's images, each on its own (so one can be read alone)."""
        ...

    async def result(self, job_id: str, image: int | None = None) -> Encoded | None:
        """The job's images, or image ``image`` alone; None once expired."""
        ...

    async def publish(self, job_id: str, event: str, data: dict[str, Any]) -> None: ...
    def follow(self, job_id: str, after: str | None) -> AsyncIterator[StoredEvent | None]:
        """Events after ``after`` (from the start when None) up to the terminal one, waiting
        for new ones; None now and then while nothing happens (a keep-alive)."""
        ...

    async def hold(self, job_ids: list[str]) -> None:
        """Take or renew this replica's lease on ``job_ids`` for ``LEASE_S`` seconds."""
        ...

    async def held(self, job_id: str) -> bool: ...
    async def request_cancel(self, job_id: str) -> None:
        """Ask whichever replica runs ``job_id`` to cancel it."""
        ...

    def cancel_requests(self) -> AsyncIterator[str]: ...


class Jobs:
    """Submits, runs, cancels and shows this replica's jobs."""

    def __init__(self, store: JobStore, *, timeout: float, webhooks: Webhooks) -> None:
        self.store = store
        self.timeout = timeout
        self.webhooks = webhooks
        self._running: dict[str, tuple[asyncio.Task[None], Ticket]] = {}
        self._reasons: dict[str, str] = {}
        self._background: list[asyncio.Task[None]] = []

    def resumed_after(self, last_event_id: str | None) -> str | None:
        """A stream's `Last-Event-ID`, checked before the stream starts: an id this store
        gives its events, else a 400."""
        if not last_event_id:
            return None
        if not self.store.event_ids.fullmatch(last_event_id):
            raise InvalidField(
                f"`Last-Event-ID` must be the id of an event this stream sent, but is "
                f"{shown(last_event_id)}.",
                field="Last-Event-ID",
            )
        return last_event_id

    def _start_background(self) -> None:
        """The lease keeper and the listener for cancels sent to other replicas, started
        with this replica's first job (they need the running event loop)."""
        if not self._background:
            self._background = [
                asyncio.create_task(self._keep_leases()),
                asyncio.create_task(self._listen_for_cancels()),
            ]

    async def submit(
        self,
        ticket: Ticket,
        owner: str,
        *,
        webhook: str | None,
        output_format: OutputFormat,
        quality: int,
    ) -> Job:
        """Store and start the job of an admitted ``ticket``; its images are encoded in
        ``output_format`` at ``quality`` once they are made."""
        self._start_background()
        job = Job(
            id=uuid.uuid4().hex,
            owner=owner,
            parameters=ticket.batch[0],
            num_images=len(ticket.batch),
            webhook=webhook,
            queue_position=ticket.position,
            eta_s=ticket.eta_s,
            created_at=time.time(),
        )
        try:
            await self.store.hold([job.id])
            await self.store.create(job)
            await self.store.publish(job.id, "queued", {"queue_position": job.queue_position})
        except BaseException:
            ticket.discard()
            raise
        task = asyncio.create_task(self._run(job, ticket, output_format, quality))
        self._running[job.id] = (task, ticket)
        return job

    async def find(self, owner: str, job_id: str) -> Job:
        """The job, as ``owner`` may see it: another key's job is not found."""
        job = await self.store.get(job_id)
        if job is None or job.owner != owner:
            raise JobNotFound(f"There is no job {job_id}.")
        running = self._running.get(job_id)
        if running is not None:
            _, ticket = running
            job.queue_position, job.eta_s = ticket.position, ticket.eta_s
        elif job.status not in TERMINAL and not await self.store.held(job_id):
            await self._end(job, "failed", LOST)
        if job.finished_at is not None and time.time() - job.finished_at > self.store.ttl:
            raise JobGone(f"Job {job_id} has expired; results are kept {self.store.ttl:g} s.")
        return job

    async def result(self, owner: str, job_id: str, image: int | None = None) -> Encoded:
        """The job's images; with ``image``, that one alone (what the OpenAI layer's URLs
        point at)."""
        job = await self.find(owner, job_id)
        if image is not None and not 0 <= image < job.num_images:
            raise InvalidField(
                f"`image` must be from 0 to {job.num_images - 1} for job {job_id}, but is {image}.",
                field="image",
            )
        result = await self.store.result(job_id, image) if job.status == "succeeded" else None
        if result is None and job.status == "succeeded":
            raise JobGone(
                f"Job {job.id}'s result was dropped to make room for newer ones (the service "
                "keeps a bounded number of bytes of results, per key and in total)."
            )
        if result is None:
            why = f" ({job.error})" if job.error else ""
            raise JobConflict(
                f"Job {job.id} is {job.status}{why}; its result exists once it has succeeded."
            )
        return result

    async def owner_of(self, job_id: str) -> str | None:
        """Whose job it is, for a signed link (which names no key); None if there is none."""
        job = await self.store.get(job_id)
        return job.owner if job is not None else None

    async def ended(self, job_id: str) -> None:
        """Wait for a job started on this replica to end (its task is not cancelled when
        the waiter is)."""
        running = self._running.get(job_id)
        if running is not None:
            await asyncio.wait({running[0]})

    async def cancel(self, owner: str, job_id: str, reason: str = "cancelled by its client") -> Job:
        job = await self.find(owner, job_id)
        if job.status in TERMINAL:
            raise JobConflict(f"Job {job_id} has already {job.status}; there is nothing to cancel.")
        running = self._running.get(job_id)
        if running is not None:
            self._reasons[job_id] = reason
            running[0].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running[0]
            return await self.find(owner, job_id)
        await self.store.request_cancel(job_id)
        deadline = time.monotonic() + REMOTE_CANCEL_WAIT_S
        while job.status not in TERMINAL and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            job = await self.find(owner, job_id)
        return job

    async def shut_down(self) -> None:
        """End every job of this replica: cancelled work, ``failed`` with reason shutdown."""
        for job_id, (task, _) in list(self._running.items()):
            self._reasons[job_id] = "shutdown"
            task.cancel()
        await asyncio.gather(*(task for task, _ in self._running.values()), return_exceptions=True)
        for task in self._background:
            task.cancel()

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            if self._running:
                try:
                    await self.store.hold(list(self._running))
                except ServiceError:
                    logger.warning("could not renew the leases of %d jobs", len(self._running))

    async def _listen_for_cancels(self) -> None:
        while True:
            try:
                async for job_id in self.store.cancel_requests():
                    running = self._running.get(job_id)
                    if running is not None:
                        self._reasons[job_id] = "cancelled by its client"
                        running[0].cancel()
            except ServiceError:
                await asyncio.sleep(1)  # the store is away; listen again when it is back

    async def _end(
        self, job: Job, status: JobStatus, error: str | None, field: str | None = None
    ) -> None:
        job.status, job.finished_at, job.eta_s, job.error = status, time.time(), None, error
        job.error_field = field
        await self.store.save(job)
        terminal: dict[str, Any] = {"status": status}
        if error is not None:
            terminal["error"] = error
        if field is not None:
            terminal["error_field"] = field
        await self.store.publish(job.id, status, terminal)
        if job.webhook:
            self.webhooks.notify(
                job.webhook, {**job.view().model_dump(include=NOTIFIED), "links": links(job.id)}
            )

    async def _run(
        self, job: Job, ticket: Ticket, output_format: OutputFormat, quality: int
    ) -> None:
        async def on_step(ticket: Ticket, event: Event) -> None:
            if job.status == "queued":
                job.status, job.started_at = "running", time.time()
            elif ticket.step == job.step:
                return  # another image of a step already reported
            job.step, job.steps, job.fraction = ticket.step, ticket.steps, ticket.fraction
            job.current_pass, job.eta_s = ticket.current_pass, ticket.eta_s
            await self.store.save(job)
            data: dict[str, Any] = {
                "step": job.step,
                "steps": job.steps,
                "current_pass": job.current_pass,
                "fraction": round(job.fraction, 4),
                "eta_s": job.view().eta_s,
            }
            if ticket.preview is not None and kept_preview(job.step, job.steps):
                data["preview"] = ticket.preview
            await self.store.publish(job.id, "progress", data)

        status: JobStatus
        error: str | None = None
        field: str | None = None  # the request field a refusal names (a prompt too long)
        try:
            async with asyncio.timeout(self.timeout - (time.time() - job.created_at)):
                generated = await ticket.run(on_step)
            encoded = await off_the_loop(lambda: encode(generated, output_format, quality))
            await self.store.save_result(job.id, encoded)
            status = "succeeded"
            job.step, job.fraction = ticket.steps, 1.0
        except asyncio.CancelledError:
            reason = self._reasons.pop(job.id, "cancelled")
            status, error = ("failed" if reason == "shutdown" else "cancelled"), reason
        except TimeoutError:
            status = "failed"
            error = f"The job took longer than {self.timeout:g} s; it was cancelled."
        except Cancelled as cancelled:
            status, error = "cancelled", cancelled.message
        except ServiceError as failure:
            status, error, field = "failed", failure.message, failure.field
        except Exception:
            logger.exception("job %s failed", job.id)
            status, error = "failed", "Image generation failed; the server log has the details."
        finally:
            self._running.pop(job.id, None)
        try:
            await self._end(job, status, error, field)
        except ServiceError:
            # The store is away: the job is not reported ended; its lease lapses and any
            # replica that looks at it then ends it failed.
            logger.error("could not record the end of job %s (%s)", job.id, status)
