"""A synchronous request's work lives only as long as its request: cancelled when the client
hangs up or when the request passes the service's timeout, so a 504 means the work stopped."""

from __future__ import annotations

import asyncio
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
    awaited) when the client leaves or ``timeout`` seconds pass. ``work`` runs in the caller's
    own task, which a hang-up cancels: one task fewer and no `asyncio.wait` per request."""
    current = asyncio.current_task()
    assert current is not None
    left = ended = False

    def hung_up(watch: asyncio.Task[None]) -> None:
        nonlocal left
        if not ended and not watch.cancelled():  # a hang-up once the work is done is no news
            left = True
            current.cancel()

    gone = asyncio.create_task(_disconnected(request))
    gone.add_done_callback(hung_up)
    try:
        async with asyncio.timeout(timeout):
            return await work
    except TimeoutError:
        raise TimedOut(
            f"The request took longer than {timeout:g} s; its generation was cancelled."
        ) from None
    except asyncio.CancelledError:
        if not left:  # the handler itself was cancelled (BentoML's own timeout)
            raise
        current.uncancel()
        raise Cancelled("The client disconnected; its generation was cancelled.") from None
    finally:
        ended = True
        gone.cancel()
