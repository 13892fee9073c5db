"""The job store's contract, run against both backends: the embedded one and a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_client

from harness.servers import Redis, free_port, redis_server
from imagegen.errors import JobGone, JobNotFound, RateLimited, StoreFull
from imagegen.schemas import Timings
from imagegen.serving.encoding import Encoded
from imagegen.serving.jobs.jobs import Job, Jobs, JobStore, StoreLimits
from imagegen.serving.jobs.memory_store import MemoryJobStore
from imagegen.serving.jobs.redis_store import RedisJobStore
from imagegen.serving.jobs.webhooks import Webhooks
from tests.conftest import PARAMETERS

TTL = 1.0


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    with redis_server(tmp_path_factory.mktemp("store-redis") / "redis.log") as running:
        yield running


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    def make(max_jobs: int, **bounds: int) -> JobStore:
        limits = StoreLimits(max_jobs, **bounds)
        if request.param == "memory":
            return MemoryJobStore(limits, ttl=TTL)
        url: str = request.getfixturevalue("redis").url
        redis_client.Redis.from_url(url).flushdb()  # each test starts from an empty store
        return RedisJobStore.connect(url, limits, ttl=TTL)

    return make


def job(job_id: str, owner: str = "key") -> Job:
    return Job(id=job_id, owner=owner, parameters=PARAMETERS, num_images=1, created_at=time.time())


def result(images: list[bytes]) -> Encoded:
    return Encoded(
        images=images,
        seeds=list(range(1, len(images) + 1)),
        format="png",
        parameters=PARAMETERS,
        timings=Timings(queue_ms=1.0, inference_ms=2.0),
        batch_size=len(images),
    )


def test_records_events_and_results_round_trip(make_store: Any) -> None:
    async def scenario() -> None:
        store = make_store(10)
        await store.create(job("a"))
        await store.publish("a", "queued", {"queue_position": 0})
        await store.publish("a", "progress", {"step": 1})
        await store.publish("a", "succeeded", {"status": "succeeded"})
        await store.save_result("a", result([b"\x89PNG", b"\x89PNG second"]))
        followed = [item async for item in store.follow("a", None) if item is not None]
        assert [event for _, event, _ in followed] == ["queued", "progress", "succeeded"]
        after_first = [item async for item in store.follow("a", followed[0][0]) if item]
        assert after_first == followed[1:]
        assert (await store.result("a")).images == [b"\x89PNG", b"\x89PNG second"]
        second = await store.result("a", 1)  # one image is read alone
        assert second.images == [b"\x89PNG second"] and second.seeds == [2]
        assert (await store.get("a")).owner == "key"
        assert await store.get("missing") is None

    asyncio.run(scenario())


def test_the_cap_expiry_and_the_gone_window(make_store: Any) -> None:
    async def scenario() -> None:
        store = make_store(2)
        jobs = Jobs(store, timeout=60, webhooks=Webhooks("", ""))
        first = job("first")
        await store.create(first)
        await store.create(job("second"))
        with pytest.raises(StoreFull) as full:
            await store.create(job("third"))
        assert full.value.status_code == 503 and int(full.value.headers["Retry-After"]) > 0
        first.status, first.finished_at = "succeeded", time.time()
        await store.save(first)
        assert (await jobs.find("key", "first")).status == "succeeded"
        with pytest.raises(JobNotFound):
            await jobs.find("another key", "first")  # another key's job does not exist
        await asyncio.sleep(TTL + 0.3)
        with pytest.raises(JobGone) as gone:
            await jobs.find("key", "first")
        assert gone.value.status_code == 410
        await store.create(job("third"))  # the expired job no longer counts
        await asyncio.sleep(TTL + 1.2)  # the record itself is kept twice the TTL
        with pytest.raises(JobNotFound):
            await jobs.find("key", "first")

    asyncio.run(scenario())


def test_one_owner_is_held_to_its_own_cap_and_the_others_are_not(make_store: Any) -> None:
    async def scenario() -> None:
        store = make_store(10, max_jobs_per_owner=2)
        first = job("a1", owner="a")
        for held in (first, job("a2", owner="a")):
            await store.create(held)
        with pytest.raises(RateLimited) as over:
            await store.create(job("a3", owner="a"))
        assert over.value.status_code == 429 and int(over.value.headers["Retry-After"]) > 0
        await store.create(job("b1", owner="b"))  # another key is not held back
        for anyone in ("x1", "x2", "x3"):  # auth off: one owner, the total alone applies
            await store.create(job(anyone, owner=""))
        first.status, first.finished_at = "succeeded", time.time()
        await store.save(first)
        await asyncio.sleep(TTL + 0.3)
        await store.create(job("a3", owner="a"))  # its expired job no longer counts

    asyncio.run(scenario())


def test_a_redis_restarted_from_its_append_only_file_keeps_finished_jobs(tmp_path: Path) -> None:
    """The manifests' Redis keeps an append-only file: a restart loses no finished work."""
    port, finished = free_port(), job("kept")
    finished.status, finished.finished_at = "succeeded", time.time()

    async def write(url: str) -> None:
        store = RedisJobStore.connect(url, StoreLimits(max_jobs=10), ttl=60)
        await store.create(finished)
        await store.save_result(finished.id, result([b"png bytes"]))

    async def read(url: str) -> tuple[Job | None, Encoded | None]:
        store = RedisJobStore.connect(url, StoreLimits(max_jobs=10), ttl=60)
        return await store.get(finished.id), await store.result(finished.id)

    with redis_server(tmp_path / "first.log", aof_dir=tmp_path, port=port) as first:
        asyncio.run(write(first.url))
    with redis_server(tmp_path / "second.log", aof_dir=tmp_path, port=port) as second:
        kept, images = asyncio.run(read(second.url))
    assert kept is not None and kept.status == "succeeded"
    assert images is not None and images.images == [b"png bytes"]


def test_past_the_bytes_bounds_the_oldest_results_go_first(make_store: Any) -> None:
    """Was: every result kept until its TTL, however many bytes (8 x 992² PNGs: 56 MiB a job)."""

    async def stored(store: JobStore, job_id: str, owner: str, size: int) -> None:
        finished = job(job_id, owner)
        finished.status, finished.finished_at = "succeeded", time.time()
        await store.create(finished)
        await store.save(finished)
        await store.save_result(job_id, result([b"x" * size]))

    async def kept(store: JobStore, *job_ids: str) -> list[str]:
        return [job_id for job_id in job_ids if await store.result(job_id) is not None]

    async def scenario() -> None:
        store = make_store(10, max_result_bytes=300, max_result_bytes_per_owner=200)
        await stored(store, "a1", "a", 100)
        await stored(store, "b1", "b", 100)
        await stored(store, "a2", "a", 100)
        await stored(store, "a3", "a", 100)  # a: 300 > 200, its oldest goes
        assert await kept(store, "a1", "b1", "a2", "a3") == ["b1", "a2", "a3"]
        await stored(store, "c1", "c", 100)  # 400 in all > 300: the oldest of anyone's goes
        assert await kept(store, "b1", "a2", "a3", "c1") == ["a2", "a3", "c1"]
        jobs = Jobs(store, timeout=60, webhooks=Webhooks("", ""))
        with pytest.raises(JobGone, match="dropped to make room"):
            await jobs.result("b", "b1")

    asyncio.run(scenario())


def test_jobs_submitted_at_once_never_pass_a_bound(make_store: Any) -> None:
    """Counted and added in one step: replicas (here, coroutines) admitting at once."""

    async def scenario() -> list[bool]:
        store = make_store(10, max_jobs_per_owner=3)

        async def admitted(k: int) -> bool:
            try:
                await store.create(job(f"j{k}", owner="a"))
            except RateLimited:
                return False
            return True

        return list(await asyncio.gather(*(admitted(k) for k in range(10))))

    assert sum(asyncio.run(scenario())) == 3
