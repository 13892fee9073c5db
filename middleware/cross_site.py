"""Cross-site requests are refused by what a browser cannot fake: a state-changing request
(any method but GET, HEAD and OPTIONS) whose ``Origin`` is not the server's own, or which a
browser marks ``Sec-Fetch-Site: cross-site``, gets 403 unless ``allowed_origins`` lists its
origin.

A web page can make a browser send a form, a ``text/plain`` body or a body-less POST to any
server without a CORS preflight, so a page a user visits could otherwise start generations or
interrupt them on a local server that runs with auth off. Browsers always send ``Origin`` with
such requests; API clients (SDKs, the front-ends' servers) send none and pass.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def foreign(headers: Headers, allowed: frozenset[str]) -> str | None:
    """The foreign origin of a browser's request (`null` too), or None when it is the
    server's own, allowed, or not a browser's."""
    origin = headers.get("origin")
    if origin is not None and origin in allowed:
        return None
    if origin is not None and origin.partition("://")[2] != headers.get("host"):
        return origin
    if headers.get("sec-fetch-site") == "cross-site":
        return origin or "another site"
    return None


class CrossSiteMiddleware:
    def __init__(self, app: ASGIApp, *, allowed_origins: frozenset[str] = frozenset()) -> None:
        """``allowed_origins``: ``scheme://host[:port]`` of pages that may send requests."""
        for origin in allowed_origins:
            scheme, _, host = origin.partition("://")
            if scheme not in ("http", "https") or not host or "/" in host:
                raise ValueError(f"`allowed_origins` must hold origins, but holds {origin!r}")
        self.app = app
        self.allowed = allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        origin = foreign(Headers(scope=scope), self.allowed)
        if origin is None:
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {
                "error": f"Requests from {origin} are refused: only pages of this server or of "
                "`IMAGEGEN_ALLOWED_ORIGINS` may send them."
            },
            status_code=403,
        )
        await response(scope, receive, send)
