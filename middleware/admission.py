"""Admission: at most ``max_concurrency`` requests in flight, each answered within ``timeout``
seconds.

Over the limit a request gets 429 with ``Retry-After`` at once instead of queueing without
bound; one that has not started its answer after ``timeout`` gets 504. Both answers come from
inside this project's stack, so they carry the request id and an access line like any other.
BentoML's own limits stay configured above these, looser, as a backstop. Probes are exempt:
they must answer under any load.

The app runs as a task of its own, as BentoML's timeout does: a synchronous handler blocks a
worker thread that cancellation cannot interrupt, so the 504 is sent without waiting for it.
Such a request still counts as in flight until its thread is free, since it still holds one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .paths import is_probe


class AdmissionMiddleware:
    def __init__(
        self, app: ASGIApp, *, max_concurrency: int, timeout: float, retry_after: int = 2
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"`max_concurrency` must be at least 1, but is {max_concurrency}")
        if timeout <= 0:
            raise ValueError(f"`timeout` must be positive, but is {timeout}")
        self.app = app
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.retry_after = retry_after
        self.in_flight = 0

    def _release(self, task: asyncio.Future[Any]) -> None:
        self.in_flight -= 1
        if not task.cancelled():
            task.exception()  # retrieved here: an abandoned task's error is already answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_probe(scope):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_concurrency:
            response = JSONResponse(
                {
                    "error": f"The server is at its limit of {self.max_concurrency} requests in "
                    f"flight; retry in {self.retry_after} s."
                },
                status_code=429,
                headers={"Retry-After": str(self.retry_after)},
            )
            await response(scope, receive, send)
            return

        started = asyncio.Event()
        abandoned = False

        async def tracked_send(message: Message) -> None:
            if abandoned:
                return
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        self.in_flight += 1
        task = asyncio.ensure_future(self.app(scope, receive, tracked_send))
        task.add_done_callback(self._release)
        waiter = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait(
                {task, waiter}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            waiter.cancel()
        if task.done() or started.is_set():
            await task  # the answer has begun: the app finishes it, errors and all
            return
        abandoned = True
        task.cancel()
        response = JSONResponse(
            {"error": f"The request took longer than {self.timeout:g} s."}, status_code=504
        )
        await response(scope, receive, send)
