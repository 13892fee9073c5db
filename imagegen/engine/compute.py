"""Where the generator process runs torch: one call at a time per lane, on a thread that
lasts only while the lane is in use. None of it on the main thread, which lives on.

torch's CPU kernels run on OpenMP, whose runtime (GNU libgomp) gives every thread that starts
a parallel region a team of its own, kept until that thread exits. Once the teams' threads
outnumber the cores, every team stops spinning between regions and sleeps instead, and each of
the thousands of small regions of a denoising step pays a futex wake-up. Measured on cpu-2
(sd-tiny 64x64, 4 steps, python -m bench.serving's stage table): the upscaler network's
warm-up on the main thread left a team there, and every pipeline call took 115 ms against
45 ms in a process without it. A lane's thread exits once it has been idle for ``linger``
seconds, taking its team with it, so an idle lane soon costs the busy ones nothing.

A lane's thread is a daemon (nothing it runs should keep a process up), so when the interpreter
exits, each lane drops what waits and the call it runs is waited for (up to ``EXIT_WAIT_S``):
a daemon thread still inside torch when the interpreter finalizes is ended by `pthread_exit`,
whose unwinding through torch's C++ frames calls `std::terminate`, and the process aborts.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
# How long an idle lane keeps its thread (and team): a new one's first call pays ~15 ms on
# cpu-2 for the new team's threads and per-thread buffers.
LINGER_S = 1.0
# How long the interpreter's exit waits for a lane's running call.
EXIT_WAIT_S = 30.0


class Lane:
    """Runs what is submitted one at a time, in order, on a thread named ``name`` that is
    started on demand and exits after ``linger`` idle seconds (a ThreadPoolExecutor's thread
    stays for good, and with it its OpenMP team)."""

    def __init__(self, name: str, linger: float = LINGER_S) -> None:
        self.name = name
        self.linger = linger
        self._queue: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None  # while there is one
        self._closed = False
        LANES.add(self)

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """``call()``'s future; run at once when submitted from this lane's own thread (it
        would otherwise wait for itself)."""
        future: Future[T] = Future()
        if threading.current_thread() is self._thread:
            run(future, call)
            return future
        with self._changed:
            if self._closed:  # the interpreter is exiting
                future.cancel()
                return future
            self._queue.append((future, call))
            self._changed.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name=self.name, daemon=True)
                self._thread.start()
        return future

    def close(self, timeout: float) -> None:
        """Cancel what waits and end the thread once its running call returns, waiting up to
        ``timeout`` seconds for that."""
        with self._changed:
            self._closed = True
            while self._queue:
                self._queue.popleft()[0].cancel()
            self._changed.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _drain(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closed, timeout=self.linger)
                if not self._queue:  # idle for `linger`, or closed
                    self._thread = None
                    return
                future, call = self._queue.popleft()
            run(future, call)


LANES: weakref.WeakSet[Lane] = weakref.WeakSet()


@atexit.register
def _close_lanes() -> None:
    """Run at exit while daemon threads still run (the interpreter ends them after)."""
    for lane in list(LANES):
        lane.close(EXIT_WAIT_S)


def run(future: Future[T], call: Callable[[], T]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(call())
    except BaseException as error:  # handed to whoever waits on the future
        future.set_exception(error)
