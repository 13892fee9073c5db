"""This replica's generations of one model, synchronous requests and jobs alike, in order of
arrival: what admits them, runs them, reports their progress and cancels them.

Admission is by work (``imagegen.work``), not by count: a request over the per-request budget
is refused with 400, and one that would wait longer than ``max_wait_s`` behind the work
already queued is answered 503 with a ``Retry-After`` from that estimate. The estimate is the
work ahead times the measured seconds per unit of work (``rates``), learned from the step
events of the generations that run.

Cancelling the task that awaits :meth:`Ticket.run` is how anything is cancelled: a client
that leaves, a timeout, ``DELETE /jobs/{id}``. The items are then cancelled in the generator
service: a queued item never starts, a running call stops at its next step once all its
images are cancelled.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from imagegen.errors import Overloaded, TooMuchWork
from imagegen.hop import Event
from imagegen.inputs import Edit
from imagegen.schemas import GenerationParameters, WorkItem
from imagegen.serving.follower import EventFollower
from imagegen.serving.metrics import report_queue
from imagegen.serving.rates import RateEstimate
from imagegen.serving.remote import Generated, GeneratorClient
from imagegen.work import evaluation_work, image_work, steps_within, work

Listener = Callable[["Ticket", Event], Awaitable[None]]


@dataclass(eq=False)
class Ticket:
    """One admitted request or job of a queue: its images and how far they have got."""

    queue: WorkQueue
    batch: list[GenerationParameters]
    edit: Edit | None
    work: float
    controls: list[str] = field(default_factory=list)  # control maps, PNG base64
    id: str = field(default_factory=lambda: secrets.token_hex(16))
    # One per image, in order: the ids its work items carry across the hop.
    ids: list[str] = field(init=False)
    started: bool = False
    steps_done: dict[str, int] = field(default_factory=dict)
    step_at: dict[str, float] = field(default_factory=dict)
    # Denoising iterations per image: the scheduler's, which may differ from
    # `num_inference_steps` (PNDM adds one); known from the first step event.
    steps: int = 0
    current_pass: int = 1  # 2: hires fix's second pass
    previews: bool = True  # made while reported (a job's only when it asks)
    preview: str | None = None  # the latest, of the first image
    interrupted: bool = False
    _task: asyncio.Task[Generated] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.ids = [secrets.token_hex(16) for _ in self.batch]
        self.steps = self.batch[0].all_steps

    @property
    def fraction(self) -> float:
        return min(sum(self.steps_done.values()) / (self.steps * len(self.batch)), 1.0)

    @property
    def step(self) -> int:
        """Denoising steps done, averaged over the images (they may run in several calls)."""
        return sum(self.steps_done.values()) // len(self.batch)

    @property
    def remaining_work(self) -> float:
        return self.work * (1 - self.fraction)

    @property
    def position(self) -> int:
        """Requests ahead of this one on this replica; 0 once it runs."""
        return 0 if self.started else self.queue.ahead(self)

    @property
    def eta_s(self) -> float | None:
        """Estimated seconds until this is done, or None before any rate is known."""
        return self.queue.eta_s(self)

    def items(self, reported: bool) -> list[WorkItem]:
        """What crosses the hop: a ``reported`` ticket's images publish their steps (the
        first with a preview, if ``previews``); an edit's image and mask and the control maps
        go with each."""
        edit = self.edit
        return [
            WorkItem(
                id=id_,
                parameters=parameters,
                report=reported,
                preview=reported and self.previews and k == 0,
                image=edit.image if edit else None,
                mask=edit.mask if edit else None,
                controls=self.controls,
            )
            for k, (id_, parameters) in enumerate(zip(self.ids, self.batch, strict=True))
        ]

    async def run(self, listener: Listener | None = None) -> Generated:
        """Generate this ticket's images; cancelling the awaiting task cancels them. With a
        ``listener`` (a job, an A1111 request), the images report their steps to it."""
        if self.interrupted:
            self.discard()
            raise asyncio.CancelledError
        self._task = asyncio.current_task()
        return await self.queue.run(self, listener)

    def interrupt(self) -> None:
        """Stop this ticket's generation, whoever awaits it (A1111's `interrupt`): the
        awaiting task is cancelled, now or as soon as it runs."""
        self.interrupted = True
        if self._task is not None:
            self._task.cancel()

    def discard(self) -> None:
        """Forget this ticket: it will not run."""
        self.queue.discard(self)

    def observe(self, event: Event) -> None:
        """Record a step event, and the rate it measures in the queue."""
        id_, step, at = event["id"], event["step"], event["at"]
        self.started = True
        self.steps = event["steps"]
        self.preview = event.get("preview") or self.preview
        previous = self.step_at.get(id_)
        self.steps_done[id_] = step
        self.step_at[id_] = at
        if previous is None or step == 0:
            return
        parameters = self.batch[self.ids.index(id_)]
        self.current_pass = event.get("current_pass", 1)
        if self.current_pass == 2:  # hires fix's second pass, at its own size
            parameters = parameters.second_pass() or parameters
        # Each step event is one loop of the pipeline: one evaluation of the denoiser (a
        # second-order scheduler loops twice per step) for every image of the call.
        call_work = evaluation_work(parameters) * event["images"]
        self.queue.record_rate(parameters, (at - previous) / call_work)


class WorkQueue:
    def __init__(
        self,
        client: GeneratorClient,
        *,
        max_request_work: float,
        max_wait_s: float,
        model: str = "",
        follower: EventFollower | None = None,
    ) -> None:
        self.client = client
        self.follower = follower or EventFollower(client)
        self.model = model  # its `name:version`, the metrics' label
        self.max_request_work = max_request_work
        self.max_wait_s = max_wait_s
        self.rates = RateEstimate()
        self._tickets: dict[str, Ticket] = {}  # in order of arrival
        self._report_due = False  # a report is scheduled on the event loop

    def admit(
        self,
        batch: list[GenerationParameters],
        edit: Edit | None = None,
        controls: list[str] | None = None,
    ) -> Ticket:
        """A ticket for ``batch``, or the error that refuses it: over the budget, or a wait
        past the bound."""
        asked = work(batch)
        if asked > self.max_request_work:
            raise TooMuchWork(self._over_budget(batch, asked))
        wait = self.wait_s()
        if wait > self.max_wait_s:
            retry_after = math.ceil(wait - self.max_wait_s) + 1
            raise Overloaded(
                f"The model's queue holds about {wait:.0f} s of work, over this server's "
                f"bound of {self.max_wait_s:g} s; retry in {retry_after} s.",
                retry_after=retry_after,
            )
        ticket = Ticket(queue=self, batch=batch, edit=edit, work=asked, controls=controls or [])
        self._tickets[ticket.id] = ticket
        self._report()
        return ticket

    def _over_budget(self, batch: list[GenerationParameters], asked: float) -> str:
        first = batch[0]
        fits = steps_within(batch, self.max_request_work)
        return (
            f"This request asks for {asked:.1f} megapixel-steps of work, over the limit "
            f"of {self.max_request_work:g} per request (per image, width x height / 10^6 "
            f"x the steps, doubled when `guidance_scale` > 1 and for two-evaluation "
            f"schedulers such as Heun, plus one for decoding): ask for fewer or smaller "
            f"images or fewer steps (at {first.width}x{first.height}, with these "
            f"settings, `num_inference_steps` up to {fits} fits)."
        )

    def discard(self, ticket: Ticket) -> None:
        self._tickets.pop(ticket.id, None)
        self._report()

    def _remaining_s(self, ticket: Ticket) -> float:
        rate = self.rates.seconds_per_work(ticket.batch[0])
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

    def ahead(self, ticket: Ticket) -> int:
        """Tickets admitted before ``ticket`` and not yet done."""
        for position, other in enumerate(self._tickets.values()):
            if other is ticket:
                return position
        return 0

    def eta_s(self, ticket: Ticket) -> float | None:
        if not self.rates.known:
            return None
        return self.wait_s(ticket) + self._remaining_s(ticket)

    @property
    def depth(self) -> int:
        return len(self._tickets)

    @property
    def full(self) -> bool:
        """Whether new work would be refused for waiting too long."""
        return self.wait_s() > self.max_wait_s

    def record_rate(self, parameters: GenerationParameters, seconds_per_work: float) -> None:
        self.rates.record(parameters, seconds_per_work)
        self._report()

    async def run(self, ticket: Ticket, listener: Listener | None) -> Generated:
        """See :meth:`Ticket.run`. Without a listener, the finished generation teaches the
        rate; with one, its step events do."""
        try:
            if listener is None:
                generated = await self.client.generate(ticket.items(reported=False))
                self._learn(generated)
                return generated

            async def on_step(event: Event) -> None:
                ticket.observe(event)
                await listener(ticket, event)

            await self.follower.open()
            with self.follower.following(ticket.ids, on_step):
                return await self.client.generate(ticket.items(reported=True))
        except asyncio.CancelledError:
            # Shielded: the cancel must reach the generator service even though this task
            # is being cancelled.
            await asyncio.shield(self.client.withdraw(ticket.ids))
            raise
        finally:
            self.discard(ticket)

    def _learn(self, generated: Generated) -> None:
        """The rate from finished pipeline calls: a call's images share one shape."""
        for generation in generated.generations:
            call_work = image_work(generation.parameters) * generation.batch_size
            self.record_rate(
                generation.parameters, (generation.finished - generation.started) / call_work
            )

    def _report(self) -> None:
        """The gauges brought up to date once the running task yields, not on a request's way:
        admission's report then runs while the generator works, and a request's last changes
        (its rate learnt, its ticket gone) make one report after its answer is sent. At once
        outside an event loop."""
        if self._report_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_report()
            return
        self._report_due = True
        loop.call_soon(self._write_report)

    def _write_report(self) -> None:
        self._report_due = False
        queued = sum(ticket.remaining_work for ticket in self._tickets.values())
        report_queue(self.model, self.depth, queued, self.wait_s())
