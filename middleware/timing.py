"""``Server-Timing`` and ``X-Process-Time`` on every response.

``total`` is the time until the response starts, measured here; entries the app already set
(``queue``, ``inference`` and their parts for generations) and those it recorded with
:func:`record` are kept in front of it, so a browser's network panel or a client can tell
waiting from computing.
"""

from __future__ import annotations

import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The request's recorded entries, in its scope's state.
RECORDED = "server_timing"


def record(scope: Scope, name: str, seconds: float) -> None:
    """Adds ``name`` to this request's ``Server-Timing``, where the middleware is mounted."""
    recorded = scope.get("state", {}).get(RECORDED)
    if recorded is not None:
        recorded.append(f"{name};dur={seconds * 1000:.1f}")


class TimingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        recorded: list[str] = []
        scope.setdefault("state", {})[RECORDED] = recorded

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = time.perf_counter() - started
                headers = MutableHeaders(scope=message)
                entries = [headers["server-timing"]] if "server-timing" in headers else []
                headers["server-timing"] = ", ".join(
                    [*entries, *recorded, f"total;dur={elapsed * 1000:.1f}"]
                )
                headers["x-process-time"] = f"{elapsed:.4f}"
            await send(message)

        await self.app(scope, receive, send_with_timing)
