"""Request bodies are JSON: a request that carries a body must declare
``Content-Type: application/json``, or it gets 415 before the app reads a byte of it.

Browsers send ``text/plain``, form and multipart bodies across origins without a CORS preflight
("simple requests"), so without this any web page a user visits could start generations on a
local server that runs with auth off; a JSON body needs a preflight, which this server does not
grant. It also keeps BentoML's multipart parser (a 500 on a header without a boundary) and its
pickle transport away from clients.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

JSON_MEDIA_TYPE = "application/json"


def carries_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


MULTIPART_MEDIA_TYPE = "multipart/form-data"


def cross_origin(headers: Headers) -> bool:
    """A browser's request from another site: forms need no preflight, so a page could post
    one to a server running with auth off. API clients send no `Origin`."""
    origin = headers.get("origin")
    return origin is not None and origin.partition("://")[2] != headers.get("host")


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp, *, multipart_paths: frozenset[str] = frozenset()) -> None:
        """``multipart_paths``: the routes (POST only) that take a form instead, for a
        compatibility API whose clients send one (OpenAI's image edits)."""
        if any(not path.startswith("/") for path in multipart_paths):
            raise ValueError(f"`multipart_paths` must be paths, but are {sorted(multipart_paths)}")
        self.app = app
        self.multipart_paths = multipart_paths

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
            and not cross_origin(headers)
        )
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
