"""Teaching BentoML's adaptive batching its timings at start-up: the lessons' order and
concurrency, and readiness waiting for them. (That a lone client is then never held is
measured by `python -m bench.serving`'s lone-client table: docs/benchmarks.md.)"""

from __future__ import annotations

import asyncio

from imagegen.engine.loading import LoadedModel
from imagegen.hop import Generation
from imagegen.schemas import ModelInfo, WorkItem
from imagegen.serving.batching_warmup import LESSONS, STEPS, teach_batching
from imagegen.serving.gateway import Gateway, job_store
from imagegen.serving.remote import GeneratorClient
from imagegen.settings import Settings
from tests.test_queue import finished


class Served:
    """The generator service as BentoML's client reaches it, after ``loading`` probes that
    say it is still loading: each call notes how many were running when it began."""

    def __init__(self, info: ModelInfo, loading: int = 0) -> None:
        self.to_async = self
        self.info = info
        self.loading = loading
        self.running = 0
        self.seen: list[int] = []
        self.items: list[WorkItem] = []
        self.release = asyncio.Event()

    async def is_ready(self, timeout: float) -> bool:
        self.loading -= 1
        return self.loading < 0

    async def models(self) -> list[ModelInfo]:
        return [self.info]

    async def generate_sd_tiny(self, items: list[WorkItem]) -> list[Generation]:
        self.running += 1
        self.seen.append(self.running)
        self.items += items
        await self.release.wait()
        await asyncio.sleep(0.001)  # the others of its lesson begin meanwhile
        self.running -= 1
        return finished(items, batch_size=1)


def test_the_lessons_are_short_and_in_the_dispatchers_order(tiny_model: LoadedModel) -> None:
    served = Served(tiny_model.info)
    served.release.set()
    asyncio.run(teach_batching(GeneratorClient(served), [tiny_model.info]))
    expected = [n for concurrent in LESSONS for n in range(1, concurrent + 1)]
    assert served.seen == expected
    # Eight and one alone, then a pair and a triple held together (extra ones to spare).
    assert LESSONS[:9] == [1] * 9 and 2 in LESSONS and 3 in LESSONS
    assert LESSONS.index(3) > LESSONS.index(2)
    assert {item.parameters.num_inference_steps for item in served.items} == {STEPS}
    assert len({item.id for item in served.items}) == len(served.items)


def test_a_served_replica_is_ready_once_taught(tiny_model: LoadedModel) -> None:
    served = Served(tiny_model.info, loading=2)

    async def scenario() -> None:
        settings = Settings(max_batch_size=8)
        gateway = Gateway(served, settings, job_store(settings))
        gateway.start()
        assert not await gateway.ready()  # still loading
        while not served.seen:  # loaded: the lessons begin
            await asyncio.sleep(0.01)
        assert not await gateway.ready()
        served.release.set()
        for _ in range(500):
            if await gateway.ready():
                break
            await asyncio.sleep(0.01)
        assert await gateway.ready()
        assert len(served.seen) == sum(LESSONS)

    asyncio.run(scenario())


def test_nothing_to_teach_without_batching_or_warm_up(tiny_model: LoadedModel) -> None:
    async def scenario(settings: Settings) -> list[int]:
        served = Served(tiny_model.info)
        gateway = Gateway(served, settings, job_store(settings))
        gateway.start()
        assert await gateway.ready()
        return served.seen

    for settings in (Settings(max_batch_size=1), Settings(max_batch_size=8, warmup=False)):
        assert asyncio.run(scenario(settings)) == []
