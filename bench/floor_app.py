"""The least a request costs over HTTP here: a raw ASGI app that answers every request with
an empty 200 and does nothing else, served by uvicorn as `bentoml serve` serves the service
(uvloop, httptools). bench/serving.py alternates it with bare pipeline calls, as it does the
service's empty request, to tell what of the fixed cost any Python HTTP server pays:

    uvicorn bench.floor_app:app --lifespan off --no-access-log
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
BODY = {"type": "http.response.body", "body": b""}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await send(START)
    await send(BODY)
