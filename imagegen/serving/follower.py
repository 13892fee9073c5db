"""One stream of the generator service's step events for the whole replica, handed out by item
id: a request per job to the generator service would cost each about 10 ms on two cores."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator

from imagegen.hop import Event
from imagegen.serving.remote import GeneratorClient

logger = logging.getLogger(__name__)

CONNECT_WAIT_S = 5.0  # how long a follower waits for the event stream to open
RECONNECT_S = 1.0

Handler = Callable[[Event], Awaitable[None]]


class EventFollower:
    def __init__(self, client: GeneratorClient) -> None:
        self.client = client
        self._handlers: dict[str, Handler] = {}  # by item id
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def open(self) -> None:
        """Start following, once, and wait (briefly) until the stream is open, so the first
        steps of what is followed next are not missed."""
        if self._task is None or self._task.done():
            self._connected = asyncio.Event()
            self._task = asyncio.create_task(self._follow())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), CONNECT_WAIT_S)

    @contextlib.contextmanager
    def following(self, ids: Iterable[str], handler: Handler) -> Iterator[None]:
        """Hand the events of ``ids`` to ``handler`` while inside."""
        ids = list(ids)
        self._handlers.update(dict.fromkeys(ids, handler))
        try:
            yield
        finally:
            for id_ in ids:
                self._handlers.pop(id_, None)

    async def _follow(self) -> None:
        """Progress is a report: a lost stream is reopened, and never fails a generation."""
        while True:
            try:
                async for event in self.client.events():
                    if event.get("connected"):
                        self._connected.set()
                        continue
                    handler = self._handlers.get(event["id"])
                    if handler is not None:
                        await handler(event)
            except Exception:
                logger.warning("lost the generator service's event stream", exc_info=True)
            await asyncio.sleep(RECONNECT_S)
