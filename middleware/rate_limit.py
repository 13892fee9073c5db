"""Per-client rate limit: a fixed window per API key id, or per client address without auth.

``rate`` is a `limits` rate such as ``60/minute``: at most that many requests in each window
of that length (a counter per client, so memory stays one entry per active client; a client
may spend two windows' worth around a boundary). Over it, 429 with ``Retry-After``: when the
window resets.
``storage`` is a `limits` storage URL: ``memory://`` keeps the windows in this process and
drops each one when it expires; ``redis://host:port`` shares them across workers and replicas
(through the ``redis`` client). Public paths and metrics are never limited.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.storage import storage_from_string
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .paths import client_bucket, is_probe, is_public


def parse_rate(rate: str) -> RateLimitItem:
    """``60/minute`` (or ``60 per minute``; ``second``, ``hour``, ``day``...) as a `limits` item."""
    try:
        limit = parse(rate)
    except ValueError:
        limit = None
    if limit is None or limit.amount < 1 or rate != rate.strip() or ";" in rate:
        raise ValueError(f"a rate limit must look like `60/minute`, but is {rate!r}")
    return limit


def limits_storage(url: str) -> Storage:
    """The asyncio flavour of a `limits` storage, so a Redis round trip never blocks the loop;
    Redis through the ``redis`` client (limits would pick ``coredis``)."""
    options = {"implementation": "redispy"} if url.startswith("redis") else {}
    storage = storage_from_string(f"async+{url}", **options)
    assert isinstance(storage, Storage)
    return storage


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, rate: str, storage: str = "memory://") -> None:
        self.app = app
        self.rate = rate
        self.limit = parse_rate(rate)
        self.limiter = FixedWindowRateLimiter(limits_storage(storage))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope) or is_probe(scope):
            await self.app(scope, receive, send)
            return
        bucket = client_bucket(scope)
        if await self.limiter.hit(self.limit, bucket):
            await self.app(scope, receive, send)
            return
        window = await self.limiter.get_window_stats(self.limit, bucket)
        retry_after = max(1, math.ceil(window.reset_time - time.time()))
        response = JSONResponse(
            {"error": f"Rate limit of {self.rate} exceeded; retry in {retry_after} s."},
            status_code=429,
            headers={"Retry-After": str(retry_after)},
        )
        await response(scope, receive, send)
