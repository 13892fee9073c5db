"""Headers that tell a browser how to treat every answer, whoever wrote it.

``X-Content-Type-Options: nosniff`` on every answer, so a browser never guesses a script or a
page out of JSON or an image. A ``Content-Security-Policy`` on every answer that sets none of
its own: ``policy``, by default one that lets nothing load or run and no page frame it (an API
answer opened in a tab stays inert). The HTML pages set their own, each with
``frame-ancestors 'none'``.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, policy: str = API_POLICY) -> None:
        if "frame-ancestors" not in policy:
            raise ValueError(f"`policy` must set `frame-ancestors`, but is {policy!r}")
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["x-content-type-options"] = "nosniff"
                headers.setdefault("content-security-policy", self.policy)
            await send(message)

        await self.app(scope, receive, send_with_headers)
