"""The public service's side of the hop to the generator service: ask it for a batch of images
and turn what can go wrong on the way into answers for the client."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import anyio.to_thread
from bentoml.exceptions import BentoMLException
from PIL.Image import Image

from imagegen.direct_hop import DirectClient, Outcomes, Unreachable, socket_path
from imagegen.errors import GenerationFailed, Overloaded
from imagegen.hop import Event, Failure, Generation, UpscaleItem, api_name
from imagegen.schemas import ModelInfo, Timings, WorkItem
from imagegen.upscalers import UpscalerInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generated:
    """The images of one request and how long the request waited for them."""

    generations: list[Generation]
    seconds: float  # from asking the generator service to having every image

    @property
    def timings(self) -> Timings:
        """Each span a difference of two clocks of one process: the generator measures from
        its API to the end of the last call; the hop is the rest of the wait."""
        generations = self.generations
        last = max(generations, key=lambda g: g.finished)
        received = min(g.received for g in generations)
        started = min(g.started for g in generations)
        inference = last.finished - started
        return Timings(
            queue_ms=ms(self.seconds - inference),
            inference_ms=ms(inference),
            hop_ms=ms(self.seconds - (last.finished - received)),
            setup_ms=ms(started - received),
            decode_ms=ms(last.finished - last.denoised),
        )

    @property
    def batch_size(self) -> int:
        """The largest pipeline call this request's images were part of."""
        return max(g.batch_size for g in self.generations)


@dataclass(frozen=True)
class Upscaled:
    """An upscaled image, and how long the generator service took, the hop included."""

    image: Image
    seconds: float


def ms(seconds: float) -> float:
    return round(max(seconds, 0) * 1000, 1)


PROBE_TIMEOUT_S = 1


def is_served(generator: Any) -> bool:
    """Whether ``generator`` is BentoML's client to the served generator service (with its
    batching queues), not an instance in this process, as in tests (whose ``to_async`` calls
    it directly)."""
    return hasattr(generator, "is_ready")


async def generator_ready(generator: Any) -> bool:
    """Whether the generator service has loaded its model, asked with a short timeout.

    BentoML's own /readyz probe of a dependency raises, instead of answering "not ready",
    while the dependency is still loading; its timeout middleware then holds the probe open
    until the traffic timeout (and a shutdown waits for it). Asked here first, /readyz stays a
    prompt 503 until the model is in memory."""
    if not is_served(generator):  # an in-process instance exists only once its __init__
        return True  # has loaded the model
    try:
        return bool(await generator.is_ready(PROBE_TIMEOUT_S))
    except Exception:  # not accepting connections yet, or still loading
        return False


class GeneratorClient:
    """The generator service as the public service reaches it: through BentoML's client when
    served, or the instance itself when the app runs in-process (as in the tests)."""

    def __init__(self, generator: Any) -> None:
        self._generator = generator
        self._remote = hasattr(generator, "to_async")
        self.served = is_served(generator)
        # Generations take the hop's short way where the generator is on this machine.
        path = socket_path() if self.served else None
        self.direct = DirectClient(path) if path is not None else None

    async def generate(self, items: list[WorkItem]) -> Generated:
        """``items`` (all for one model) from that model's queue in the generator service,
        which may run them together with other requests' items."""
        api = api_name(items[0].parameters.model)
        sent = time.perf_counter()
        try:
            outcomes = await self._outcomes(api, items)
        except BentoMLException as error:
            if error.error_code == HTTPStatus.SERVICE_UNAVAILABLE:
                # BentoML's batch queue sheds what has waited past the max latency.
                raise Overloaded("The model's queue is full; retry later.") from error
            logger.error("the generator service failed: %s", error)
            raise GenerationFailed() from error
        except Exception as error:
            logger.exception("no answer from the generator service")
            raise GenerationFailed() from error
        generations = []
        for outcome in outcomes:
            if isinstance(outcome, Failure):
                raise outcome.exception()
            generations.append(outcome)
        return Generated(generations, time.perf_counter() - sent)

    async def _outcomes(self, api: str, items: list[WorkItem]) -> Outcomes:
        if self.direct is not None:
            try:
                return await self.direct.generate(api, items)
            except Unreachable as error:  # nothing was sent: BentoML's way still works
                logger.warning("%s; asking through BentoML's client", error)
        if self._remote:
            outcomes: Outcomes = await getattr(self._generator.to_async, api)(items)
            return outcomes
        return await anyio.to_thread.run_sync(getattr(self._generator, api), items)

    async def models(self) -> list[ModelInfo]:
        infos: list[ModelInfo] = await self._api.models()
        return infos

    async def upscalers(self) -> list[UpscalerInfo]:
        infos: list[UpscalerInfo] = await self._api.upscalers()
        return infos

    async def upscale(self, item: UpscaleItem) -> Upscaled:
        """``item`` upscaled; cancelling the awaiting task cancels it in the generator."""
        sent = time.perf_counter()
        try:
            image = await self._api.upscale(item)
        except asyncio.CancelledError:
            # Shielded: the cancel must reach the generator service even though this task
            # is being cancelled.
            await asyncio.shield(self.withdraw([item.id]))
            raise
        except Exception as error:
            logger.exception("no upscale from the generator service")
            raise GenerationFailed() from error
        return Upscaled(image, time.perf_counter() - sent)

    @property
    def _api(self) -> Any:
        """The generator's async APIs: its client's, or the instance's own in-process."""
        return self._generator.to_async if self._remote else self._generator

    async def cancel(self, ids: list[str]) -> None:
        await self._api.cancel(ids)

    async def withdraw(self, ids: list[str]) -> None:
        """Cancel ``ids`` for a caller that is itself being cancelled: a failure is logged."""
        try:
            await self.cancel(ids)
        except Exception:
            logger.exception("could not cancel %d items in the generator service", len(ids))

    async def events(self) -> AsyncIterator[Event]:
        """The generator service's step events, from one long-lived stream. It arrives in
        chunks that need not end on a line, so lines are reassembled here."""
        stream = self._api.events()
        pending = ""
        async for chunk in stream:
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                yield json.loads(line)
