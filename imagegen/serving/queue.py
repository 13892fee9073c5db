"""This replica's generations, synchronous requests and jobs alike, in order of arrival: what
admits them, runs them, reports their progress and cancels them.

Admission is by work (``imagegen.work``), not by count: a request over the per-request budget
is refused with 400, and one that would wait longer than ``max_wait_s`` behind the work
already queued is answered 503 with a ``Retry-After`` from that estimate. The estimate is the
work ahead times the measured seconds per unit of work, learned from the step events of the
generations that run.

Cancelling the task that awaits :meth:`WorkQueue.run` is how anything is cancelled: a client
that leaves, a timeout, ``DELETE /jobs/{id}``. The items are then cancelled in the generator
service: a queued item never starts, a running call stops at its next step once all its
images are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache

import prometheus_client

from imagegen.errors import Overloaded, TooMuchWork
from imagegen.hop import Event
from imagegen.inputs import Edit
from imagegen.schemas import GenerationParameters, WorkItem
from imagegen.serving.remote import Generated, GeneratorClient
from imagegen.work import image_work, work

logger = logging.getLogger(__name__)

# Weight of the newest step in the running estimate of seconds per unit of work.
RATE_WEIGHT = 0.3
CONNECT_WAIT_S = 5.0  # how long a job waits for the event stream to open before it runs
RECONNECT_S = 1.0


@cache
def queue_metrics() -> tuple[
    prometheus_client.Gauge, prometheus_client.Gauge, prometheus_client.Gauge
]:
    # Created on first use, after BentoML has set up prometheus_client's multiprocess mode.
    depth = prometheus_client.Gauge(
        "imagegen_queue_depth",
        "Generations (requests and jobs) admitted and not yet finished.",
        labelnames=["model"],
        multiprocess_mode="livesum",
    )
    queued = prometheus_client.Gauge(
        "imagegen_queued_work",
        "Work admitted and not yet done, in megapixel-steps.",
        labelnames=["model"],
        multiprocess_mode="livesum",
    )
    wait = prometheus_client.Gauge(
        "imagegen_estimated_wait_seconds",
        "Estimated seconds until the admitted work is done (queued work x measured seconds "
        "per unit): what the autoscaler scales on.",
        labelnames=["model"],
        multiprocess_mode="livemax",
    )
    return depth, queued, wait


def size_class(parameters: GenerationParameters) -> int:
    """Images within a factor of about 1.4 in pixels share a measured rate."""
    return round(math.log2(parameters.width * parameters.height))


@dataclass(eq=False)
class Ticket:
    """One admitted request or job: its images and how far they have got."""

    items: list[WorkItem]
    work: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: bool = False
    steps_done: dict[str, int] = field(default_factory=dict)
    step_at: dict[str, float] = field(default_factory=dict)
    # Denoising iterations per image: the scheduler's, which may differ from
    # `num_inference_steps` (PNDM adds one); known from the first step event.
    steps: int = 0
    preview: str | None = None  # the latest, of the first image

    def __post_init__(self) -> None:
        self.steps = self.items[0].parameters.denoising_steps

    @property
    def fraction(self) -> float:
        return min(sum(self.steps_done.values()) / (self.steps * len(self.items)), 1.0)

    @property
    def step(self) -> int:
        """Denoising steps done, averaged over the images (they may run in several calls)."""
        return sum(self.steps_done.values()) // len(self.items)

    @property
    def remaining_work(self) -> float:
        return self.work * (1 - self.fraction)


Listener = Callable[[Ticket, Event], Awaitable[None]]


class WorkQueue:
    def __init__(
        self,
        client: GeneratorClient,
        *,
        max_request_work: float,
        max_wait_s: float,
        model: str = "",
    ) -> None:
        self.client = client
        self.model = model  # its `name:version`, the metrics' label
        self.max_request_work = max_request_work
        self.max_wait_s = max_wait_s
        # Seconds per megapixel-step, by size class: small images cost more per pixel (fixed
        # per-step costs), so one rate for all sizes misjudges a mix of them (measured with
        # sd-tiny on two cores: 1.58 s per unit at 64x64, 0.29 at 256x256).
        self._rates: dict[int, float] = {}
        self._tickets: dict[str, Ticket] = {}  # in order of arrival
        self._listeners: dict[str, tuple[Ticket, Listener]] = {}  # by item id
        self._follower: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    def check_budget(self, batch: list[GenerationParameters]) -> None:
        """Refuse ``batch`` with 400 if it asks for more work than one request may."""
        asked = work(batch)
        if asked > self.max_request_work:
            first = batch[0]
            raise TooMuchWork(
                f"This request asks for {asked:.1f} megapixel-steps of work, over the limit "
                f"of {self.max_request_work:g} per request (images x steps x width x height "
                f"/ 10^6, doubled when `guidance_scale` > 1): ask for fewer or smaller "
                f"images or fewer steps (at {first.width}x{first.height}, with these "
                f"settings, `num_inference_steps` up to {self._steps_within_budget(batch)} "
                f"fits)."
            )

    def admit(
        self, batch: list[GenerationParameters], reported: bool = False, edit: Edit | None = None
    ) -> Ticket:
        """A ticket for ``batch``, or the error that refuses it: over the budget, or a wait
        past the bound. A ``reported`` ticket's images publish their steps (the first with a
        preview); an ``edit``'s image and mask go with each of them."""
        self.check_budget(batch)
        wait = self.wait_s()
        if wait > self.max_wait_s:
            retry_after = math.ceil(wait - self.max_wait_s) + 1
            raise Overloaded(
                f"The model's queue holds about {wait:.0f} s of work, over this server's "
                f"bound of {self.max_wait_s:g} s; retry in {retry_after} s.",
                retry_after=retry_after,
            )
        ticket = Ticket(
            items=[
                WorkItem(
                    id=uuid.uuid4().hex,
                    parameters=parameters,
                    report=reported,
                    preview=reported and k == 0,
                    image=edit.image if edit else None,
                    mask=edit.mask if edit else None,
                )
                for k, parameters in enumerate(batch)
            ],
            work=work(batch),
        )
        self._tickets[ticket.id] = ticket
        self._report()
        return ticket

    def discard(self, ticket: Ticket) -> None:
        """Forget a ticket that will not run."""
        self._tickets.pop(ticket.id, None)
        self._report()

    def _steps_within_budget(self, batch: list[GenerationParameters]) -> int:
        per_step = work(batch) / batch[0].num_inference_steps
        return max(math.floor(self.max_request_work / per_step), 0)

    def seconds_per_work(self, parameters: GenerationParameters) -> float | None:
        """The rate measured for images of this size class, or the nearest class's; None
        before any measurement."""
        if not self._rates:
            return None
        size = size_class(parameters)
        return self._rates[min(self._rates, key=lambda known: abs(known - size))]

    def record_rate(self, parameters: GenerationParameters, seconds_per_work: float) -> None:
        """A measured rate for ``parameters``' size class, weighted into the estimate."""
        size = size_class(parameters)
        rate = self._rates.get(size)
        self._rates[size] = (
            seconds_per_work if rate is None else rate + RATE_WEIGHT * (seconds_per_work - rate)
        )
        self._report()

    def _remaining_s(self, ticket: Ticket) -> float:
        rate = self.seconds_per_work(ticket.items[0].parameters)
        return 0.0 if rate is None else ticket.remaining_work * rate

    def wait_s(self, before: Ticket | None = None) -> float:
        """Estimated seconds until the work ahead of ``before`` (all work when None) is
        done; 0 while no rate has been measured."""
        ahead = 0.0
        for ticket in self._tickets.values():
            if ticket is before:
                break
            ahead += self._remaining_s(ticket)
        return ahead

    def position(self, ticket: Ticket) -> int:
        """Requests ahead of ``ticket`` on this replica; 0 once it runs."""
        if ticket.started:
            return 0
        ahead = 0
        for other in self._tickets.values():
            if other is ticket:
                break
            ahead += 1
        return ahead

    def eta_s(self, ticket: Ticket) -> float | None:
        """Estimated seconds until ``ticket`` is done, or None before any rate is known."""
        if not self._rates:
            return None
        return self.wait_s(ticket) + self._remaining_s(ticket)

    @property
    def depth(self) -> int:
        return len(self._tickets)

    @property
    def full(self) -> bool:
        """Whether new work would be refused for waiting too long."""
        return self.wait_s() > self.max_wait_s

    async def run(self, ticket: Ticket, listener: Listener | None = None) -> Generated:
        """Generate ``ticket``'s images; cancelling the awaiting task cancels them. With a
        ``listener`` (a job), its images' step events reach it; without, its finished
        generation teaches the rate."""
        if listener is not None:
            await self._following()
            self._listeners.update(
                dict.fromkeys((item.id for item in ticket.items), (ticket, listener))
            )
        try:
            generated = await self.client.generate(ticket.items)
            if listener is None:
                self._learn(generated)
            return generated
        except asyncio.CancelledError:
            # Shielded: the cancel must reach the generator service even though this task
            # is being cancelled.
            await asyncio.shield(self._cancel(ticket))
            raise
        finally:
            for item in ticket.items:
                self._listeners.pop(item.id, None)
            self.discard(ticket)

    async def _cancel(self, ticket: Ticket) -> None:
        try:
            await self.client.cancel([item.id for item in ticket.items])
        except Exception:
            logger.exception(
                "could not cancel %d images in the generator service", len(ticket.items)
            )

    async def _following(self) -> None:
        """Start following the generator service's event stream, once, and wait (briefly)
        until it is open, so a job's first steps are not missed."""
        if self._follower is None or self._follower.done():
            self._connected = asyncio.Event()
            self._follower = asyncio.create_task(self._follow())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), CONNECT_WAIT_S)

    async def _follow(self) -> None:
        """One stream of every reported step, for all of this replica's jobs: a request per
        job to the generator service would cost each about 10 ms on two cores. Progress is a
        report: a lost stream is reopened, and never fails a generation."""
        while True:
            try:
                async for event in self.client.events():
                    if event.get("connected"):
                        self._connected.set()
                        continue
                    following = self._listeners.get(event["id"])
                    if following is not None:
                        ticket, listener = following
                        self._observe(ticket, event)
                        await listener(ticket, event)
            except Exception:
                logger.warning("lost the generator service's event stream", exc_info=True)
            await asyncio.sleep(RECONNECT_S)

    def _observe(self, ticket: Ticket, event: Event) -> None:
        id_, step, at = event["id"], event["step"], event["at"]
        ticket.started = True
        ticket.steps = event["steps"]
        ticket.preview = event.get("preview") or ticket.preview
        previous = ticket.step_at.get(id_)
        ticket.steps_done[id_] = step
        ticket.step_at[id_] = at
        if previous is None or step == 0:
            return
        parameters = next(item.parameters for item in ticket.items if item.id == id_)
        call_work = image_work(parameters) / parameters.denoising_steps * event["images"]
        self.record_rate(parameters, (at - previous) / call_work)

    def _learn(self, generated: Generated) -> None:
        """The rate from finished pipeline calls: a call's images share one shape."""
        for generation in generated.generations:
            call_work = image_work(generation.parameters) * generation.batch_size
            self.record_rate(
                generation.parameters, (generation.finished - generation.started) / call_work
            )

    def _report(self) -> None:
        depth, queued, wait = queue_metrics()
        depth.labels(model=self.model).set(self.depth)
        queued.labels(model=self.model).set(
            sum(ticket.remaining_work for ticket in self._tickets.values())
        )
        wait.labels(model=self.model).set(self.wait_s())
