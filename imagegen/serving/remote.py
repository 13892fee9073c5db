"""The public service's side of the hop to the generator service: ask it for a batch of images
and turn what can go wrong on the way into answers for the client."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import anyio.to_thread
from bentoml.exceptions import BentoMLException

from imagegen.errors import GenerationFailed, Overloaded
from imagegen.hop import Event, Failure, Generation, api_name
from imagegen.schemas import ModelInfo, Timings, WorkItem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generated:
    """The images of one request and how long the request waited for them."""

    generations: list[Generation]
    seconds: float  # from asking the generator service to having every image

    @property
    def timings(self) -> Timings:
        # From the first pipeline call's start to the last one's end, measured in the generator
        # service; the rest of the wait is queueing, batching and the hop between processes.
        inference = max(g.finished for g in self.generations) - min(
            g.started for g in self.generations
        )
        return Timings(
            queue_ms=round(max(self.seconds - inference, 0) * 1000, 1),
            inference_ms=round(inference * 1000, 1),
        )

    @property
    def batch_size(self) -> int:
        """The largest pipeline call this request's images were part of."""
        return max(g.batch_size for g in self.generations)


PROBE_TIMEOUT_S = 1


async def generator_ready(generator: Any) -> bool:
    """Whether the generator service has loaded its model, asked with a short timeout.

    BentoML's own /readyz probe of a dependency raises, instead of answering "not ready",
    while the dependency is still loading; its timeout middleware then holds the probe open
    until the traffic timeout (and a shutdown waits for it). Asked here first, /readyz stays a
    prompt 503 until the model is in memory."""
    if not hasattr(generator, "is_ready"):  # an in-process instance, as in tests, exists
        return True  # only once its __init__ has loaded the model
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

    async def generate(self, items: list[WorkItem]) -> Generated:
        """``items`` (all for one model) from that model's API of the generator service,
        which may run them together with other requests' items."""
        api = api_name(items[0].parameters.model)
        sent = time.perf_counter()
        try:
            if self._remote:
                outcomes = await getattr(self._generator.to_async, api)(items)
            else:
                outcomes = await anyio.to_thread.run_sync(getattr(self._generator, api), items)
        except BentoMLException as error:
            if error.error_code == HTTPStatus.SERVICE_UNAVAILABLE:
                # BentoML's batch queue sheds what has waited past the max latency.
                raise Overloaded("The model's queue is full; retry later.") from error
            logger.error("the generator service failed: %s", error)
            raise GenerationFailed() from error
        except Exception as error:
            logger.exception("no answer from the generator service")
            raise GenerationFailed() from error
        for outcome in outcomes:
            if isinstance(outcome, Failure):
                raise outcome.exception()
        return Generated(outcomes, time.perf_counter() - sent)

    async def models(self) -> list[ModelInfo]:
        infos: list[ModelInfo] = await (
            self._generator.to_async if self._remote else self._generator
        ).models()
        return infos

    async def cancel(self, ids: list[str]) -> None:
        if self._remote:
            await self._generator.to_async.cancel(ids)
        else:
            await self._generator.cancel(ids)

    async def events(self) -> AsyncIterator[Event]:
        """The generator service's step events, from one long-lived stream. It arrives in
        chunks that need not end on a line, so lines are reassembled here."""
        stream = (self._generator.to_async if self._remote else self._generator).events()
        pending = ""
        async for chunk in stream:
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                yield json.loads(line)
