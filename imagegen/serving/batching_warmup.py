"""Teaching BentoML's adaptive batching its timings before the replica reports ready.

BentoML's batching dispatcher learns from the first calls to a batched API after a start:
eight calls of one, one more, then one call it holds until two requests are queued and one
until three are, each for up to about twice a call's time. A lone client meets that at its
9th to 11th request (2.4x its latency on sd-tiny, 19.5 s with 12 s calls: docs/benchmarks.md),
and every restart and new replica goes through it. Short generations sent here in the same
order, the pairs and triples concurrently, take it through those phases at start-up, so no
client's request is ever held waiting for partners that are not coming."""

from __future__ import annotations

import asyncio
import logging
import uuid

from imagegen.parameters import resolve
from imagegen.schemas import ImageRequest, ModelInfo, WorkItem
from imagegen.serving.remote import GeneratorClient

logger = logging.getLogger(__name__)

# Calls of 1, 2 and 3 concurrent requests, in order. More than the dispatcher's schedule asks
# (8 + 1 singles, a pair, a triple): an extra one costs a short call, a missing one a client's
# wait; a pair sent while it waits for three is held only until its triple comes.
LESSONS = [1] * 10 + [2] * 2 + [3] * 2
# Small and one step: the dispatcher learns a call's fixed cost from these, and relearns from
# real calls as they come.
SIZE, STEPS = 64, 1


def lesson_item(info: ModelInfo) -> WorkItem:
    request = ImageRequest(
        prompt="warm-up", width=SIZE, height=SIZE, num_inference_steps=STEPS, seed=0
    )
    return WorkItem(id=uuid.uuid4().hex, parameters=resolve(request, info))


async def teach_batching(client: GeneratorClient, models: list[ModelInfo]) -> None:
    """Each model's batched API taken through the dispatcher's learning."""
    for info in models:
        for concurrent in LESSONS:
            await asyncio.gather(*(client.generate([lesson_item(info)]) for _ in range(concurrent)))
        logger.info("adaptive batching taught its timings for %s", info.tag)
