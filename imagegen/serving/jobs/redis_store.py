"""The shared job store: Redis (``IMAGEGEN_REDIS_URL``), so any replica answers for any job.

Keys, under ``imagegen:``: ``job:{id}`` (the record, JSON), ``result:{id}`` (what the
encoded answer says of its images, JSON) and ``result:{id}:{k}`` (image k's bytes, so one is
read alone), ``events:{id}`` (a Redis stream: its entry ids are the SSE event ids, so
`Last-Event-ID` resumes on any replica), ``lease:{id}`` (held by the replica running the job,
renewed every few seconds), the sorted set ``jobs`` (ids by expiry, for the job cap) and the
channel ``cancel`` (a `DELETE` sent to one replica reaches the one running the job). Every
key expires: a finished job's result and events after ``ttl``, its record after twice that.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import redis
import redis.asyncio

from imagegen.errors import StoreUnavailable
from imagegen.serving.encoding import Encoded
from imagegen.serving.jobs.jobs import (
    LEASE_S,
    TERMINAL,
    Job,
    StoredEvent,
    StoreLimits,
    check_room,
)

PREFIX = "imagegen:"
KEEPALIVE_MS = 15_000
COMMAND_TIMEOUT_S = 1.5
# An unfinished job's keys outlive any job (IMAGEGEN_TIMEOUT); a looker ends it first.
UNFINISHED_S = 86_400
MAX_EVENTS = 10_000  # per job: 150 steps x 8 images is far below

P = ParamSpec("P")
R = TypeVar("R")


# A new job, added to the unexpired jobs in total and of its owner (sorted sets scored by
# expiry) only if both have room, in one step, so replicas admitting at once never pass a
# bound. ARGV: now, id, expiry, the total bound, the owner's (-1: none). [total, owner's,
# 1 if added] as they were.
ADMIT_JOB = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local held, owners = redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])
local max_owner = tonumber(ARGV[5])
if held >= tonumber(ARGV[4]) or (max_owner >= 0 and owners >= max_owner) then
  return {held, owners, 0}
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return {held, owners, 1}
"""


# A result stored: account for its bytes, forget the expired, then drop the oldest results
# (any owner's while over the total, the owner's while over its bound) but this one. KEYS:
# results by time stored (sorted set), their [bytes, images, owner] (hash). ARGV: now, ttl,
# id, bytes, images, total bound, owner's bound (-1: none), key prefix. The dropped ids.
DROP_RESULTS = """
local now, ttl, id, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[8]
for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - ttl)) do
  redis.call('HDEL', KEYS[2], old)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
local record = redis.call('GET', prefix .. 'job:' .. id)
local owner = record and cjson.decode(record).owner or ''
redis.call('ZADD', KEYS[1], now, id)
redis.call('HSET', KEYS[2], id, cjson.encode({tonumber(ARGV[4]), tonumber(ARGV[5]), owner}))
local stored, sizes, total, owners = redis.call('ZRANGE', KEYS[1], 0, -1), {}, 0, 0
for _, each in ipairs(stored) do
  local raw = redis.call('HGET', KEYS[2], each)
  sizes[each] = raw and cjson.decode(raw) or {0, 0, ''}
  total = total + sizes[each][1]
  if sizes[each][3] == owner then owners = owners + sizes[each][1] end
end
local max_total, max_owner, dropped = tonumber(ARGV[6]), tonumber(ARGV[7]), {}
for _, each in ipairs(stored) do
  local over_total = max_total >= 0 and total > max_total
  local over_owner = owner ~= '' and max_owner >= 0 and owners > max_owner
  if not (over_total or over_owner) then break end
  local size = sizes[each]
  if each ~= id and (over_total or size[3] == owner) then
    redis.call('DEL', prefix .. 'result:' .. each)
    for k = 0, size[2] - 1 do redis.call('DEL', prefix .. 'result:' .. each .. ':' .. k) end
    redis.call('ZREM', KEYS[1], each)
    redis.call('HDEL', KEYS[2], each)
    total = total - size[1]
    if size[3] == owner then owners = owners - size[1] end
    table.insert(dropped, each)
  end
end
return dropped
"""


def owned(owner: str) -> str:
    """The key of an owner's jobs (an API key's id; "" with auth off)."""
    return f"{PREFIX}jobs-of:{owner}"


def where(url: str) -> str:
    """``url`` without its credentials, for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


def reachable(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Redis unreachable (or failing) is a 503 with `Retry-After` for the job paths."""

    @functools.wraps(method)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except redis.RedisError as error:
            raise StoreUnavailable("The job store is unreachable; retry later.") from error

    return guarded


class RedisJobStore:
    event_ids = re.compile(r"[0-9]{1,20}-[0-9]{1,20}", re.ASCII)  # Redis stream entry ids

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        waits: redis.asyncio.Redis | None = None,
        limits: StoreLimits,
        ttl: float,
    ) -> None:
        self.client = client
        self.waits = waits or client  # for the blocking reads
        self.limits = limits
        self.ttl = ttl
        self._admit = client.register_script(ADMIT_JOB)
        self._drop_results = client.register_script(DROP_RESULTS)

    @classmethod
    def connect(cls, url: str, limits: StoreLimits, *, ttl: float) -> RedisJobStore:
        """A store on ``url``, which must answer now: start-up fails with a clear message
        otherwise (the URL's credentials are never shown)."""
        try:
            redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
        except redis.RedisError as error:
            raise RuntimeError(
                f"IMAGEGEN_REDIS_URL: Redis at {where(url)} does not answer ({error}); "
                "start it or correct the URL."
            ) from None
        # Commands answer within COMMAND_TIMEOUT_S or the job paths say 503, so a frozen
        # Redis never holds a request; the blocking reads (event streams, cancels) wait on
        # connections of their own, whose timeout outlasts a block.
        client = redis.asyncio.Redis.from_url(
            url, socket_connect_timeout=COMMAND_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S
        )
        waits = redis.asyncio.Redis.from_url(
            url, socket_connect_timeout=COMMAND_TIMEOUT_S, socket_timeout=2 * KEEPALIVE_MS / 1000
        )
        return cls(client, waits=waits, limits=limits, ttl=ttl)

    def _expiry(self, job: Job) -> float:
        if job.finished_at is None:
            return time.time() + UNFINISHED_S
        return job.finished_at + self.ttl

    @reachable
    async def create(self, job: Job) -> None:
        per_owner = self.limits.max_jobs_per_owner if job.owner else None
        bounds = [self.limits.max_jobs, -1 if per_owner is None else per_owner]
        held, owners, added = await self._admit(
            keys=[PREFIX + "jobs", owned(job.owner)],
            args=[time.time(), job.id, self._expiry(job), *bounds],
        )
        if not added:
            check_room(self.limits, held, owners, job.owner)  # says which bound
        await self._write(job)

    async def _write(self, job: Job) -> None:
        expiry = self._expiry(job)
        keep = math.ceil(expiry + self.ttl - time.time())  # the record: twice the result
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(f"{PREFIX}job:{job.id}", job.model_dump_json(), ex=max(keep, 1))
            pipe.expire(f"{PREFIX}events:{job.id}", max(math.ceil(expiry - time.time()), 1))
            for key in (PREFIX + "jobs", owned(job.owner)):
                pipe.zadd(key, {job.id: expiry}, xx=True)
            await pipe.execute()

    @reachable
    async def get(self, job_id: str) -> Job | None:
        stored = await self.client.get(f"{PREFIX}job:{job_id}")
        return None if stored is None else Job.model_validate_json(stored)

    @reachable
    async def save(self, job: Job) -> None:
        await self._write(job)

    @reachable
    async def save_result(self, job_id: str, result: Encoded) -> None:
        key, keep = f"{PREFIX}result:{job_id}", math.ceil(self.ttl)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(key, result.model_dump_json(exclude={"images"}), ex=keep)
            for k, image in enumerate(result.images):
                pipe.set(f"{key}:{k}", image, ex=keep)
            await pipe.execute()
        bounds = [self.limits.max_result_bytes, self.limits.max_result_bytes_per_owner]
        await self._drop_results(
            keys=[PREFIX + "results", PREFIX + "result-sizes"],
            args=[
                time.time(),
                self.ttl,
                job_id,
                sum(map(len, result.images)),
                len(result.images),
                *(-1 if bound is None else bound for bound in bounds),
                PREFIX,
            ],
        )

    @reachable
    async def result(self, job_id: str, image: int | None = None) -> Encoded | None:
        key = f"{PREFIX}result:{job_id}"
        stored = await self.client.get(key)
        if stored is None:
            return None
        described = json.loads(stored)
        seeds: list[int] = described["seeds"]
        wanted = range(len(seeds)) if image is None else [image]
        images = await self.client.mget([f"{key}:{k}" for k in wanted])
        if any(data is None for data in images):
            return None  # expired between the two reads
        return Encoded.model_validate(
            {**described, "images": images, "seeds": [seeds[k] for k in wanted]}
        )

    @reachable
    async def publish(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        key = f"{PREFIX}events:{job_id}"
        fields = {"event": event, "data": json.dumps(data)}
        await self.client.xadd(key, fields, maxlen=MAX_EVENTS, approximate=True)  # type: ignore[arg-type]

    async def follow(self, job_id: str, after: str | None) -> AsyncIterator[StoredEvent | None]:
        """Event ids are the stream's entry ids."""
        last = after or "0-0"
        key = f"{PREFIX}events:{job_id}"
        while True:
            try:
                # [[key, [(entry id, {field: value})...]]], or empty after the block
                answer: Any = await self.waits.xread({key: last}, count=100, block=KEEPALIVE_MS)
            except redis.RedisError as error:
                raise StoreUnavailable("The job store is unreachable; retry later.") from error
            if not answer:
                yield None
                continue
            for entry_id, fields in answer[0][1]:
                last = entry_id.decode()
                event = fields[b"event"].decode()
                yield last, event, json.loads(fields[b"data"])
                if event in TERMINAL:
                    return

    @reachable
    async def hold(self, job_ids: list[str]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.set(f"{PREFIX}lease:{job_id}", "1", px=int(LEASE_S * 1000))
            await pipe.execute()

    @reachable
    async def held(self, job_id: str) -> bool:
        return bool(await self.client.exists(f"{PREFIX}lease:{job_id}"))

    @reachable
    async def request_cancel(self, job_id: str) -> None:
        await self.client.publish(PREFIX + "cancel", job_id)

    async def cancel_requests(self) -> AsyncIterator[str]:
        try:
            async with self.waits.pubsub() as pubsub:
                await pubsub.subscribe(PREFIX + "cancel")
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        yield message["data"].decode()
        except redis.RedisError as error:
            raise StoreUnavailable("The job store is unreachable.") from error
