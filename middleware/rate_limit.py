"""Per-client rate limit: a token bucket per API key id, or per client address without auth.

``rate`` reads like ``60/minute``: a bucket holds that many tokens and refills at that rate, so
a client may burst up to the whole allowance and then goes at the steady rate. Over it, 429
with ``Retry-After``. Buckets live in this process's memory (one per key or address).
"""

from __future__ import annotations

import math
import re

import token_bucket
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

RATE = re.compile(r"(?P<count>\d+)/(?P<unit>second|minute|hour|day)")
SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """``60/minute`` -> (60, 60): requests allowed, per that many seconds."""
    parsed = RATE.fullmatch(rate)
    if parsed is None or int(parsed["count"]) < 1:
        raise ValueError(f"a rate limit must look like `60/minute`, but is {rate!r}")
    return int(parsed["count"]), SECONDS[parsed["unit"]]


class RateLimitMiddleware:
    def __init__(
        self, app: ASGIApp, *, rate: str, exempt_paths: frozenset[str] = frozenset()
    ) -> None:
        capacity, period = parse_rate(rate)
        self.app = app
        self.rate = rate
        self.exempt_paths = exempt_paths
        self.tokens_per_second = capacity / period
        self.buckets = token_bucket.MemoryStorage()
        self.limiter = token_bucket.Limiter(self.tokens_per_second, capacity, self.buckets)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        key_id = scope.get("state", {}).get("api_key_id")
        client = scope.get("client")
        bucket = f"key:{key_id}" if key_id else f"addr:{client[0] if client else 'unknown'}"
        if self.limiter.consume(bucket):
            await self.app(scope, receive, send)
            return
        missing = 1 - self.buckets.get_token_count(bucket)
        retry_after = max(1, math.ceil(missing / self.tokens_per_second))
        response = JSONResponse(
            {"error": f"Rate limit of {self.rate} exceeded; retry in {retry_after} s."},
            status_code=429,
            headers={"Retry-After": str(retry_after)},
        )
        await response(scope, receive, send)
