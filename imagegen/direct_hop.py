"""The hop's short way: generation requests from the public process to the generator process
over a Unix socket of their own, beside the one BentoML serves the generator on.

Measured (python -m bench.serving, cpu-2): a generation's round trip through BentoML's client,
its HTTP server and its batching dispatcher costs 3-4 ms; pickled frames on a kept-open local
socket cost a few tenths of one. The generator batches what arrives here itself, greedily: a
model's requests that arrive while its pipeline is busy run together in its next call (up to
the batch size), and a lone request never waits for partners.

The socket exists only where BentoML put the generator on a local socket (``bentoml serve``
runs both services on one machine): its path is BentoML's own for the generator plus
``.direct``, in the private directory BentoML made for it, so only this machine's processes
of this user reach it, as with BentoML's. Elsewhere (the generator behind a URL) the public
process uses BentoML's client and adaptive batching as before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import os
import pickle
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from imagegen.hop import Failure, Generation
from imagegen.schemas import WorkItem

logger = logging.getLogger(__name__)

GENERATOR = "imagegen-generator"
SUFFIX = ".direct"
HEADER = struct.Struct("!Q")  # each frame: its length, then a pickle
# Frames larger than this are unpickled off the event loop (init images, masks, controls).
INLINE_BYTES = 64 * 1024

Outcomes = list[Generation | Failure]
Started = concurrent.futures.Future[Outcomes]  # a call under way on a model's thread


def socket_path(runner_map: str | None = None) -> Path | None:
    """Where the generator listens for this hop, from BentoML's map of its services
    (``BENTOML_RUNNER_MAP``, given to every process of a ``bentoml serve``), or None when
    the generator is not on a local socket."""
    raw = os.environ.get("BENTOML_RUNNER_MAP") if runner_map is None else runner_map
    if not raw:
        return None
    url = urlparse(json.loads(raw).get(GENERATOR, ""))
    if url.scheme not in ("file", "unix") or not url.path:
        return None
    return Path(url.path + SUFFIX)


def frame(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> Any:
    (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    body = await reader.readexactly(length)
    if length > INLINE_BYTES:
        return await asyncio.to_thread(pickle.loads, body)
    return pickle.loads(body)


class Batcher:
    """One model's queue on the generator's side: requests waiting while its pipeline is
    busy go together into its next call, whole requests up to ``max_batch_size`` images."""

    def __init__(self, run: Callable[[list[WorkItem]], Started], max_batch_size: int) -> None:
        self._run = run  # starts a call on the model's own thread
        self._max = max_batch_size
        self._waiting: list[tuple[list[WorkItem], asyncio.Future[Outcomes]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, items: list[WorkItem]) -> Outcomes:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((items, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[list[WorkItem], asyncio.Future[Outcomes]]]:
        taken: list[tuple[list[WorkItem], asyncio.Future[Outcomes]]] = []
        count = 0
        while self._waiting and (not taken or count + len(self._waiting[0][0]) <= self._max):
            request = self._waiting.pop(0)
            taken.append(request)
            count += len(request[0])
        return taken

    async def _drain(self) -> None:
        while self._waiting:
            taken = self._take()
            items = [item for request, _ in taken for item in request]
            try:
                outcomes = await asyncio.wrap_future(self._run(items))
            except Exception as error:  # the runner answers failures as outcomes: a bug
                logger.exception("a batch of %d items failed", len(items))
                for _, future in taken:
                    if not future.done():
                        future.set_exception(error)
                continue
            start = 0
            for request, future in taken:
                if not future.done():
                    future.set_result(outcomes[start : start + len(request)])
                start += len(request)


class DirectServer:
    """The generator's end: each connection's frames are ``(number, api, items)``; each is
    answered ``(number, outcomes)``, or ``(number, None)`` if it failed, in any order."""

    def __init__(self, batchers: dict[str, Batcher]) -> None:
        self.batchers = batchers
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a generator that died
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        os.chmod(path, 0o600)
        logger.info("generation requests taken on %s", path)

    async def close(self) -> None:
        """Stop listening and hang up: requests in flight fail at once on the other end."""
        if self._server is not None:
            self._server.close()
        for writer in self._connections:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                number, api, items = await read_frame(reader)
                task = asyncio.create_task(self._answer(writer, number, api, items))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, OSError):
            pass  # the public process closed the connection
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _answer(
        self, writer: asyncio.StreamWriter, number: int, api: str, items: list[WorkItem]
    ) -> None:
        try:
            outcomes: Outcomes | None = await self.batchers[api].submit(items)
        except Exception:
            logger.exception("generation request %d (%s) failed", number, api)
            outcomes = None
        if not writer.is_closing():
            writer.write(frame((number, outcomes)))
            with contextlib.suppress(OSError):
                await writer.drain()


class Unreachable(ConnectionError):
    """Nothing listens on the socket (yet): nothing was sent."""


class DirectClient:
    """The public process's end: one connection, opened on first use and again after the
    generator restarts, with any number of requests in flight on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        self._connecting = asyncio.Lock()
        # Each request's answer, and the connection it was sent on.
        self._waiting: dict[int, tuple[asyncio.StreamWriter, asyncio.Future[Outcomes | None]]] = {}
        self._numbers = itertools.count()
        self._reading: asyncio.Task[None] | None = None

    async def generate(self, api: str, items: Sequence[WorkItem]) -> Outcomes:
        """``items``' outcomes from the generator's ``api`` queue. Raises Unreachable when
        nothing listens, and ConnectionError when the connection or the request fails."""
        writer = await self._connected()
        number = next(self._numbers)
        answer: asyncio.Future[Outcomes | None] = asyncio.get_running_loop().create_future()
        self._waiting[number] = (writer, answer)
        try:
            writer.write(frame((number, api, list(items))))
            await writer.drain()
            outcomes = await answer
        finally:
            self._waiting.pop(number, None)
        if outcomes is None:
            raise ConnectionError("the generator failed the request")
        return outcomes

    async def _connected(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                try:
                    reader, self._writer = await asyncio.open_unix_connection(str(self.path))
                except OSError as error:
                    raise Unreachable(f"no generator on {self.path}: {error}") from error
                self._reading = asyncio.create_task(self._read(reader, self._writer))
                logger.info("generations go to the generator on %s", self.path)
            return self._writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                number, outcomes = await read_frame(reader)
                waiting = self._waiting.get(number)  # none if its caller has gone
                if waiting is not None and not waiting[1].done():
                    waiting[1].set_result(outcomes)
        except (asyncio.IncompleteReadError, OSError) as error:
            writer.close()
            lost = ConnectionError(f"the generator closed the connection ({error!r})")
            # Only what was sent on this connection: a new one may be open already.
            for sent_on, answer in self._waiting.values():
                if sent_on is writer and not answer.done():
                    answer.set_exception(lost)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reading is not None:
            self._reading.cancel()
