"""The embedded job store: this process's memory. Nothing to install; one replica."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from imagegen.serving.encoding import Encoded
from imagegen.serving.jobs.jobs import (
    TERMINAL,
    Job,
    StoredEvent,
    StoreLimits,
    check_room,
    over_bytes,
)

KEEPALIVE_S = 15.0


def size(entry: _Entry) -> int:
    return sum(map(len, entry.result.images)) if entry.result is not None else 0


@dataclass
class _Entry:
    job: Job
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    result: Encoded | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class MemoryJobStore:
    event_ids = re.compile(r"[0-9]{1,9}", re.ASCII)  # positions in the job's event log

    def __init__(self, limits: StoreLimits, *, ttl: float) -> None:
        self.limits = limits
        self.ttl = ttl
        self._entries: dict[str, _Entry] = {}

    def _prune(self) -> Counter[str]:
        """Drop what has expired; the jobs still counted against the limits, by owner."""
        now, live = time.time(), Counter[str]()
        for job_id, entry in list(self._entries.items()):
            finished = entry.job.finished_at
            if finished is not None and now - finished > 2 * self.ttl:
                del self._entries[job_id]
            elif finished is not None and now - finished > self.ttl:
                entry.result, entry.events = None, []
            else:
                live[entry.job.owner] += 1
        return live

    async def create(self, job: Job) -> None:
        live = self._prune()
        check_room(self.limits, live.total(), live[job.owner], job.owner)
        self._entries[job.id] = _Entry(job.model_copy())

    async def get(self, job_id: str) -> Job | None:
        self._prune()
        entry = self._entries.get(job_id)
        return None if entry is None else entry.job.model_copy()

    async def save(self, job: Job) -> None:
        entry = self._entries[job.id]
        entry.job = job.model_copy()
        entry.touch()

    async def save_result(self, job_id: str, result: Encoded) -> None:
        entry = self._entries[job_id]
        entry.result = result
        self._make_room(entry.job.owner, keep=job_id)

    def _make_room(self, owner: str, keep: str) -> None:
        """Drop the oldest finished results until the bytes bounds hold again."""
        stored = [e for e in self._entries.values() if e.result is not None]
        total = sum(size(e) for e in stored)
        owners = sum(size(e) for e in stored if e.job.owner == owner)
        for entry in sorted(stored, key=lambda e: e.job.finished_at or 0.0):
            over_total, over_owner = over_bytes(self.limits, total, owners, owner)
            if not (over_total or over_owner):
                return
            if entry.job.id == keep or not (over_total or entry.job.owner == owner):
                continue
            total -= size(entry)
            owners -= size(entry) if entry.job.owner == owner else 0
            entry.result = None

    async def result(self, job_id: str, image: int | None = None) -> Encoded | None:
        entry = self._entries.get(job_id)
        result = None if entry is None else entry.result
        return result if result is None or image is None else result.only(image)

    async def publish(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        entry = self._entries[job_id]
        entry.events.append((event, data))
        entry.touch()

    async def follow(self, job_id: str, after: str | None) -> AsyncIterator[StoredEvent | None]:
        """Event ids count from 1."""
        position = int(after) if after else 0
        while True:
            entry = self._entries.get(job_id)
            if entry is None:
                return
            while position < len(entry.events):
                event, data = entry.events[position]
                position += 1
                yield str(position), event, data
                if event in TERMINAL:
                    return
            try:
                await asyncio.wait_for(entry.changed.wait(), KEEPALIVE_S)
            except TimeoutError:
                yield None

    # One process runs every job it holds: a lease cannot lapse while it lives, and a
    # cancel never needs to reach another replica.
    async def hold(self, job_ids: list[str]) -> None:
        pass

    async def held(self, job_id: str) -> bool:
        return True

    async def request_cancel(self, job_id: str) -> None:
        pass

    async def cancel_requests(self) -> AsyncIterator[str]:
        await asyncio.Event().wait()  # none ever come: this waits for ever
        yield ""  # never reached; makes this an async generator like Redis's
