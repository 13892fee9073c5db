"""Request bodies are JSON: a request that carries a body must declare
``Content-Type: application/json``, or it gets 415 before the app reads a byte of it. Under
``undeclared_prefixes`` (AUTOMATIC1111's API, whose clients post JSON without declaring it, as
A1111 accepts) a body that declares nothing is read as JSON too.

This keeps BentoML's multipart parser (a 500 on a header without a boundary) and its pickle
transport away from clients. Cross-site requests are refused by ``Origin``
(:mod:`middleware.cross_site`), not here.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

JSON_MEDIA_TYPE = "application/json"


def carries_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


MULTIPART_MEDIA_TYPE = "multipart/form-data"


class JsonBodyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        multipart_paths: frozenset[str] = frozenset(),
        undeclared_prefixes: tuple[str, ...] = (),
    ) -> None:
        """``multipart_paths``: the routes (POST only) that take a form instead, for a
        compatibility API whose clients send one (OpenAI's image edits).
        ``undeclared_prefixes``: path prefixes where a body without a ``Content-Type`` is JSON."""
        paths = [*multipart_paths, *undeclared_prefixes]
        if any(not path.startswith("/") for path in paths):
            raise ValueError(f"`multipart_paths` and `undeclared_prefixes` must be paths: {paths}")
        self.app = app
        self.multipart_paths = multipart_paths
        self.undeclared_prefixes = undeclared_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-type", "")
        media_type = declared.partition(";")[0].strip().lower()
        form = (
            media_type == MULTIPART_MEDIA_TYPE
            and scope["method"] == "POST"
            and scope["path"] in self.multipart_paths
        )
        if not declared and scope["path"].startswith(self.undeclared_prefixes):
            # Declared for the app, whose parser reads only bodies that say they are JSON.
            raw = [*scope["headers"], (b"content-type", JSON_MEDIA_TYPE.encode())]
            scope = {**scope, "headers": raw}
            media_type = JSON_MEDIA_TYPE
        if media_type == JSON_MEDIA_TYPE or form or not carries_body(headers):
            await self.app(scope, receive, send)
            return
        shown = f"`{media_type}`" if media_type else "not declared"
        response = JSONResponse(
            {"error": f"The request body must be JSON (`{JSON_MEDIA_TYPE}`), but is {shown}."},
            status_code=415,
            headers={"Accept-Post": JSON_MEDIA_TYPE},
        )
        await response(scope, receive, send)
