"""Give every request an id, echoed in ``X-Request-ID`` and put in log lines and error bodies.

An incoming ``X-Request-ID`` is kept when it is 1..128 characters of ``[A-Za-z0-9._-]``, so a
proxy's id flows through while nothing a client sends can forge log or header syntax;
otherwise a new one is made. The id is in ``scope["state"]["request_id"]`` and in
:data:`REQUEST_ID` for log records.

JSON error answers (status >= 400) get a ``request_id`` field, whoever wrote them (BentoML's
validation errors included). Those bodies are short and never streamed, so only they are held
back to be rewritten; every other body passes through untouched.
"""

from __future__ import annotations

import json
import re
import uuid
from contextvars import ContextVar

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_REWRITTEN_BODY = 64 * 1024


def _with_request_id(body: bytes, request_id: str) -> bytes:
    try:
        document = json.loads(body)
    except ValueError:
        return body
    if not isinstance(document, dict):
        return body
    return json.dumps({**document, "request_id": request_id}).encode()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        held_start: Message | None = None
        held_body = bytearray()

        async def send_with_id(message: Message) -> None:
            nonlocal held_start
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                is_json = headers.get("content-type", "").startswith("application/json")
                if message["status"] >= 400 and is_json:
                    held_start = message
                    return
            elif message["type"] == "http.response.body" and held_start is not None:
                held_body.extend(message.get("body", b""))
                if message.get("more_body") and len(held_body) <= MAX_REWRITTEN_BODY:
                    return
                body = bytes(held_body)
                if not message.get("more_body"):
                    body = _with_request_id(body, request_id)
                    MutableHeaders(scope=held_start)["content-length"] = str(len(body))
                start, held_start = held_start, None
                await send(start)
                message = {**message, "body": body}
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
