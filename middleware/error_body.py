"""Every error answer in one shape: a JSON object with an ``error`` sentence and the
``request_id``, whoever wrote it, and ``Retry-After`` on every 429 and 503.

Writers other than this service's code answer in other shapes: Starlette's router says 404 and
405 in plain text, BentoML answers a schema violation with ``N validation error for
<internal class>`` and some client errors as a JSON *array*, FastAPI's 422 has only
``detail``. Here each becomes the same object: where ``detail`` lists field errors, ``error``
is their messages (the schema writes them as sentences naming the field, rule and value).

Only error bodies (status >= 400) are held back; they are short and never streamed. Every other
body passes through untouched, and so does an error body over ``MAX_ERROR_BODY`` bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_ERROR_BODY = 64 * 1024
RETRY_STATUSES = frozenset({429, 503})
# The router's answers (Starlette's in plain text, FastAPI's as `detail`), said here in full;
# an app's own 404 with an `error` keeps it.
ROUTER_STATUSES = frozenset({404, 405})


def _parsed(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _sentence(status: int, scope: Scope, allow: str | None) -> str:
    if status == 404:
        return f"There is no `{scope['path']}` here; `/docs` lists the API."
    if status == 405:
        allowed = f"; it allows {allow}" if allow else ""
        return f"`{scope['method']}` is not allowed on `{scope['path']}`{allowed}."
    return f"{HTTPStatus(status).phrase}."


def error_document(status: int, body: bytes, scope: Scope, allow: str | None) -> dict[str, Any]:
    """``body`` as this service's error object (``request_id`` is added by the caller)."""
    document = _parsed(body)
    if isinstance(document, list) and len(document) == 1:  # BentoML's one-item array
        document = document[0]
    if not isinstance(document, dict) or (status in ROUTER_STATUSES and "error" not in document):
        return {"error": _sentence(status, scope, allow)}
    detail = document.get("detail")
    if (
        isinstance(detail, list)
        and detail
        and all(isinstance(item, dict) and "msg" in item for item in detail)
    ):
        document["error"] = " ".join(str(item["msg"]) for item in detail)
    elif isinstance(detail, str) and "error" not in document:
        document["error"] = detail
        del document["detail"]
    document.setdefault("error", _sentence(status, scope, allow))
    return document


Reshape = Callable[[int, dict[str, Any]], dict[str, Any]]


class ErrorBodyMiddleware:
    def __init__(
        self, app: ASGIApp, *, retry_after: int = 5, dialects: Mapping[str, Reshape] | None = None
    ) -> None:
        """``dialects``: path prefix -> how a compatibility API under it says the same
        error, for clients that parse their own shape (OpenAI's SDK)."""
        if retry_after < 1:
            raise ValueError(f"`retry_after` must be at least 1, but is {retry_after}")
        if any(not prefix.startswith("/") for prefix in dialects or {}):
            raise ValueError(f"`dialects` must be keyed by paths, but has {list(dialects or {})}")
        self.app = app
        self.retry_after = str(retry_after)
        self.dialects = dict(dialects or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held_start: Message | None = None
        held_body = bytearray()

        async def send_shaped(message: Message) -> None:
            nonlocal held_start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held_start = message
                return
            if message["type"] != "http.response.body" or held_start is None:
                await send(message)
                return
            held_body.extend(message.get("body", b""))
            within = len(held_body) <= MAX_ERROR_BODY
            if message.get("more_body", False) and within:
                return
            start, held_start = held_start, None
            body = bytes(held_body)
            if within:  # and complete
                body = self._shaped(start, body, scope)
            await send(start)
            await send({**message, "body": body})

        await self.app(scope, receive, send_shaped)

    def _shaped(self, start: Message, body: bytes, scope: Scope) -> bytes:
        headers = MutableHeaders(scope=start)
        document = error_document(start["status"], body, scope, headers.get("allow"))
        document["request_id"] = scope.get("state", {}).get("request_id")
        for prefix, reshape in self.dialects.items():
            if scope["path"].startswith(prefix):
                document = reshape(start["status"], document)
        shaped = json.dumps(document).encode()
        headers["content-type"] = "application/json"
        headers["content-length"] = str(len(shaped))
        if start["status"] in RETRY_STATUSES and "retry-after" not in headers:
            headers["retry-after"] = self.retry_after
        return shaped
