"""The generator service's side of progress and cancellation, by work-item id.

The pipeline thread publishes a step event after every denoising step for each image that
asked to be reported (a job's), and reads the cancelled set before and during each call; the
public service cancels ids and follows every reported step over one long-lived stream, through
the generator service's async APIs, which answer at once while a call runs.
Everything here is thread-safe: the pipeline thread writes, the event loop reads.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from imagegen.hop import Event

# A cancel may arrive before its item does (still queued in the batcher); it is kept this long.
FORGET_CANCELLED_S = 3600.0


@dataclass(eq=False)
class _Watcher:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)


class Tracker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled: dict[str, float] = {}  # id -> when
        self._watchers: set[_Watcher] = set()

    def cancel(self, ids: Iterable[str]) -> None:
        now = time.monotonic()
        with self._lock:
            self._cancelled = {
                id_: when
                for id_, when in self._cancelled.items()
                if now - when < FORGET_CANCELLED_S
            }
            self._cancelled.update(dict.fromkeys(ids, now))

    def is_cancelled(self, id_: str) -> bool:
        return id_ in self._cancelled

    def publish(self, events: Iterable[Event]) -> None:
        """From any thread: hand each event to every watcher."""
        with self._lock:
            watchers = list(self._watchers)
        for event in events:
            for watcher in watchers:
                watcher.loop.call_soon_threadsafe(watcher.queue.put_nowait, event)

    async def stream(self) -> AsyncIterator[Event]:
        """Every event from now on, for as long as the watcher listens."""
        watcher = _Watcher(asyncio.get_running_loop())
        with self._lock:
            self._watchers.add(watcher)
        try:
            while True:
                yield await watcher.queue.get()
        finally:
            with self._lock:
                self._watchers.discard(watcher)
