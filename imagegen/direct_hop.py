"""The hop's short way: generation requests from the public process to the generator process
over a Unix socket of their own, beside the one BentoML serves the generator on.

Measured (python -m bench.serving, cpu-2): a generation's round trip through BentoML's client,
its HTTP server and its batching dispatcher costs 3-4 ms; pickled frames on a kept-open local
socket cost a few tenths of one. The generator batches what arrives here itself, greedily: a
model's requests that arrive while its pipeline is busy run together in its next call (up to
the batch size), and a lone request never waits for partners. No event loop is on a
request's way through the generator: a thread per connection reads the frames, and the
model's own thread pickles and sends each answer as its call ends (about 1 ms of its time
per 512x512 image). An event loop there, woken on the way in and again on the way out, cost
a request about 0.25 ms more (bench.serving's hop stage, three runs of each, alternating on
cpu-2: 1.3-1.4 -> 1.0-1.1 ms).

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
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol
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


Reply = Callable[[Outcomes | None], None]


class Runs(Protocol):
    """Where a model's calls run, one at a time (its :class:`~imagegen.engine.compute.Lane`)."""

    def submit(self, call: Callable[[], None]) -> concurrent.futures.Future[None]: ...


class Batcher:
    """One model's queue on the generator's side: requests waiting while its pipeline is
    busy go together into its next call, whole requests up to ``max_batch_size`` images.
    Calls run on the model's own thread (``lane``), which answers each request itself as
    its call ends: no other thread is woken on the way back."""

    def __init__(
        self, lane: Runs, run: Callable[[list[WorkItem]], Outcomes], max_batch_size: int
    ) -> None:
        self._lane = lane
        self._run = run
        self._max = max_batch_size
        self._lock = threading.Lock()
        self._waiting: list[tuple[list[WorkItem], Reply]] = []
        self._busy = False  # a drain is queued or running on the lane

    def submit(self, items: list[WorkItem], reply: Reply) -> None:
        """``reply`` gets ``items``' outcomes, or None if their call failed, on the model's
        thread. Any thread may submit."""
        with self._lock:
            self._waiting.append((items, reply))
            start, self._busy = not self._busy, True
        if start:
            self._lane.submit(self._drain)

    def _take(self) -> list[tuple[list[WorkItem], Reply]]:
        taken: list[tuple[list[WorkItem], Reply]] = []
        count = 0
        while self._waiting and (not taken or count + len(self._waiting[0][0]) <= self._max):
            request = self._waiting.pop(0)
            taken.append(request)
            count += len(request[0])
        return taken

    def _drain(self) -> None:
        while True:
            with self._lock:
                taken = self._take()
                if not taken:
                    self._busy = False
                    return
            self._call(taken)

    def _call(self, taken: list[tuple[list[WorkItem], Reply]]) -> None:
        """One call for ``taken``, each request answered; nothing raised, since the queue
        would stop with this drain."""
        items = [item for request, _ in taken for item in request]
        try:
            outcomes: Outcomes | None = self._run(items)
        except Exception:  # the runner answers failures as outcomes: a bug
            logger.exception("a batch of %d items failed", len(items))
            outcomes = None
        start = 0
        for request, reply in taken:
            try:
                reply(None if outcomes is None else outcomes[start : start + len(request)])
            except Exception:
                logger.exception("a request's answer could not be sent")
            start += len(request)


class Connection:
    """One connection from the public process, served by a thread of its own: it reads each
    frame ``(number, api, items)`` and hands it to that model's batcher, whose thread sends
    the answer ``(number, outcomes)`` (``None`` if it failed) as its call ends."""

    def __init__(self, sock: socket.socket, batchers: dict[str, Batcher]) -> None:
        self._socket = sock
        self._batchers = batchers
        self._sending = threading.Lock()  # whole frames, one at a time, from any thread

    def serve(self) -> None:
        try:
            while True:
                (length,) = HEADER.unpack(self._read(HEADER.size))
                number, api, items = pickle.loads(self._read(length))
                batcher = self._batchers.get(api)
                if batcher is None:  # a model this generator has not loaded
                    logger.error("generation request %d for %s: no such queue", number, api)
                    self._send(number, None)
                else:
                    batcher.submit(items, partial(self._send, number))
        except (EOFError, OSError):
            pass  # the public process closed the connection, or this end hung up
        except Exception:
            logger.exception("a malformed request on the hop's short way: hanging up")
        finally:
            self.hang_up()
            self._socket.close()

    def _read(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self._socket.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return bytes(data)

    def _send(self, number: int, outcomes: Outcomes | None) -> None:
        try:
            data = frame((number, outcomes))
        except Exception:  # an outcome that does not pickle: a bug, answered as a failure
            logger.exception("generation request %d: its answer does not pickle", number)
            data = frame((number, None))
        with self._sending:
            try:
                self._socket.sendall(data)
            except OSError:
                self.hang_up()  # a frame may have gone out in part: the other end must see EOF

    def hang_up(self) -> None:
        """The other end sees the connection closed, at once."""
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)


class DirectServer:
    """The generator's end: a thread accepts connections, and each is served by a thread of
    its own (:class:`Connection`), so that no event loop is woken on a request's way."""

    def __init__(self, batchers: dict[str, Batcher]) -> None:
        self.batchers = batchers
        self._listening: socket.socket | None = None
        self._connections: set[Connection] = set()

    def start(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a generator that died
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listening.bind(str(path))
        os.chmod(path, 0o600)
        listening.listen()
        self._listening = listening
        threading.Thread(
            target=self._accept, args=(listening,), name="direct-hop", daemon=True
        ).start()
        logger.info("generation requests taken on %s", path)

    def close(self) -> None:
        """Stop listening and hang up: requests in flight fail at once on the other end."""
        if self._listening is not None:
            with contextlib.suppress(OSError):
                self._listening.shutdown(socket.SHUT_RDWR)
            self._listening.close()
        for connection in list(self._connections):
            connection.hang_up()

    def _accept(self, listening: socket.socket) -> None:
        while True:
            try:
                sock, _ = listening.accept()
            except OSError:
                return  # closed
            connection = Connection(sock, self.batchers)
            self._connections.add(connection)
            threading.Thread(
                target=self._serve, args=(connection,), name="direct-hop-connection", daemon=True
            ).start()

    def _serve(self, connection: Connection) -> None:
        try:
            connection.serve()
        finally:
            self._connections.discard(connection)


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
        writer = self._writer
        if writer is not None and not writer.is_closing():
            return writer  # open: no lock to take on a request's way
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
