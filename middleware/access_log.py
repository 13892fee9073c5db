"""One JSON line per request: who asked for what, how it went, how long it took.

Fields: request_id (from the request id middleware, which runs inside this one so the bytes
counted here are the bytes sent), method, path, status, duration_ms, bytes_in,
bytes_out, client, api_key_id (set by the auth middleware; never the key), and for generations
the model and seed the response reports in ``X-Model`` and ``X-Seed``. Prompts are logged only
with ``log_prompts``: they can hold personal data.

An exception that escapes the app is logged here once, traceback included, on the same line,
and answered with a JSON 500 when no response has started; it is not re-raised, so the server
does not log it a second time. Probes and metrics (``middleware.paths``) are not logged:
they are polled.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .paths import is_probe

ACCESS_LOGGER = logging.getLogger("imagegen.access")
# Prompts are at most a few kB; the capture stops there whatever the body size.
PROMPT_CAPTURE_BYTES = 16 * 1024


def _prompts(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(document, dict):
        return {}
    return {key: document[key] for key in ("prompt", "negative_prompt") if key in document}


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, *, log_prompts: bool = False) -> None:
        self.app = app
        self.log_prompts = log_prompts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_probe(scope):
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        # Filled by the middlewares inside: request id, API key id.
        state = scope.setdefault("state", {})
        line: dict[str, Any] = {"status": None, "bytes_in": 0, "bytes_out": 0}
        captured = bytearray()

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                line["bytes_in"] += len(body)
                if self.log_prompts and len(captured) < PROMPT_CAPTURE_BYTES:
                    captured.extend(body[: PROMPT_CAPTURE_BYTES - len(captured)])
            return message

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                line["status"] = message["status"]
                headers = Headers(raw=message.get("headers", []))
                line["model"] = headers.get("x-model")
                line["seed"] = int(headers["x-seed"]) if "x-seed" in headers else None
            elif message["type"] == "http.response.body":
                line["bytes_out"] += len(message.get("body", b""))
            await send(message)

        failure: BaseException | None = None
        try:
            await self.app(scope, counting_receive, observing_send)
        except Exception as error:
            failure = error
            if line["status"] is None:
                body = {"error": "Internal server error.", "request_id": state.get("request_id")}
                await JSONResponse(body, status_code=500)(scope, receive, observing_send)

        line["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)
        if self.log_prompts:
            line.update(_prompts(bytes(captured)))
        self._log(scope, line, failure)

    @staticmethod
    def _log(scope: Scope, line: dict[str, Any], failure: BaseException | None) -> None:
        state = scope["state"]
        client = scope.get("client")
        line.update(
            request_id=state.get("request_id"),
            method=scope["method"],
            path=scope["path"],
            client=client[0] if client else None,
            api_key_id=state.get("api_key_id"),
        )
        if failure is None:
            ACCESS_LOGGER.info("request", extra=line)
        else:
            ACCESS_LOGGER.error("unhandled error", extra=line, exc_info=failure)
