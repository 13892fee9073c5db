"""A synchronous request's work lives only as long as its request: cancelled when the client
hangs up or when the request passes the service's timeout, so a 504 means the work stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from imagegen.errors import Cancelled, TimedOut

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up. The body has been read, so the server's next message
    is the disconnect: one wait, seen at once, where polling ``is_disconnected`` went through
    every middleware's receive (and a tracing span) ten times a second."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def while_requested(work: Awaitable[T], timeout: float, request: Request) -> T:
    """``work``'s result, for ``request``; its work is cancelled (and the cancellation
    awaited) when the client leaves or ``timeout`` seconds pass."""
    task = asyncio.ensure_future(work)
    gone = asyncio.create_task(_disconnected(request))
    try:
        done, _ = await asyncio.wait(
            {task, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if gone in done:
            raise Cancelled("The client disconnected; its generation was cancelled.")
        raise TimedOut(f"The request took longer than {timeout:g} s; its generation was cancelled.")
    finally:
        gone.cancel()
        task.cancel()  # the handler itself was cancelled (BentoML's own timeout)
