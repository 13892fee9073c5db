"""The rate limit by work (``IMAGEGEN_WORK_RATE_LIMIT``): megapixel-steps per client in each
window, charged when a generation is admitted (its work is known only once the body is read,
so this is not a middleware). One 64x64 image of four steps costs 0.03 units, one 2048x2048
image of 150 guided steps 1258: a client is charged for what it asks the model to do."""

from __future__ import annotations

import math
import time

from limits.aio.strategies import FixedWindowRateLimiter

from imagegen.errors import RateLimited
from middleware.rate_limit import limits_storage, parse_rate

# Units are counted in hundredths, so small images are charged what they cost.
PRECISION = 100


class WorkRateLimit:
    def __init__(self, rate: str, storage: str) -> None:
        self.rate = rate
        limit = parse_rate(rate)
        self.limit = type(limit)(limit.amount * PRECISION, limit.multiples, "WORK")
        self.limiter = FixedWindowRateLimiter(limits_storage(storage))

    async def charge(self, bucket: str, work: float) -> None:
        """Charge ``work`` to ``bucket``, or refuse it with 429 and when to retry."""
        cost = max(math.ceil(work * PRECISION), 1)
        # Tested first: a refused request is not charged (a fixed window's hit counts it).
        if await self.limiter.test(self.limit, bucket, cost=cost) and await self.limiter.hit(
            self.limit, bucket, cost=cost
        ):
            return
        window = await self.limiter.get_window_stats(self.limit, bucket)
        retry_after = max(1, math.ceil(window.reset_time - time.time()))
        raise RateLimited(
            f"This request's {work:.2f} megapixel-steps would pass the work limit of "
            f"{self.rate} megapixel-steps ({window.remaining / PRECISION:.2f} left in this "
            f"window); retry in {retry_after} s.",
            retry_after=retry_after,
        )
