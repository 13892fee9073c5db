"""Refuse request bodies over ``max_bytes`` with 413, without reading them into memory, and
bodies that have not arrived whole ``timeout`` seconds after the request began with 408.

A declared ``Content-Length`` over the limit is refused before the app runs. A chunked body,
or one that lies about its length, is counted as it streams to the app; the chunk that crosses
the limit ends it: the client gets the 413, the app sees a disconnect, and whatever the app
then sends or raises (typically `ClientDisconnect`) is dropped. A body trickled a byte at a
time ends the same way at its deadline, with 408, so it holds a connection slot for at most
``timeout`` seconds; once the body is whole, waiting (for a disconnect) is not limited.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout: float | None = None) -> None:
        if max_bytes < 1:
            raise ValueError(f"`max_bytes` must be at least 1, but is {max_bytes}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"`timeout` must be positive, but is {timeout}")
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    def _too_large(self) -> JSONResponse:
        return JSONResponse(
            {"error": f"The request body must be at most {self.max_bytes} bytes."},
            status_code=413,
        )

    def _too_slow(self) -> JSONResponse:
        return JSONResponse(
            {"error": f"The request body must arrive within {self.timeout:g} s."},
            status_code=408,
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return

        received = 0
        refused = whole = False
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout

        async def limited_receive() -> Message:
            nonlocal received, refused, whole
            if refused:
                return {"type": "http.disconnect"}
            try:
                async with asyncio.timeout_at(None if whole else deadline):
                    message = await receive()
            except TimeoutError:
                refused = True
                await self._too_slow()(scope, receive, send)
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                whole = not message.get("more_body", False)
                if received > self.max_bytes:
                    refused = True
                    await self._too_large()(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise
