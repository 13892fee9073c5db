from __future__ import annotations

import pytest
from starlette.types import Receive, Scope, Send

from middleware.rate_limit import RateLimitMiddleware, parse_rate
from tests.asgi import call, ok_app


def test_requests_over_the_rate_get_429_with_retry_after() -> None:
    limited = RateLimitMiddleware(ok_app, rate="3/minute")
    statuses = [call(limited, "/models").status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = call(limited, "/models")
    assert 1 <= int(refused.headers["retry-after"]) <= 60  # when the window resets
    assert "3/minute" in refused.json()["error"]


def test_clients_are_limited_separately_by_address() -> None:
    limited = RateLimitMiddleware(ok_app, rate="1/hour")
    assert call(limited, "/models", client=("10.0.0.1", 1)).status == 200
    assert call(limited, "/models", client=("10.0.0.1", 2)).status == 429
    assert call(limited, "/models", client=("10.0.0.2", 1)).status == 200


def test_api_keys_are_limited_separately_whatever_the_address() -> None:
    limited = RateLimitMiddleware(ok_app, rate="1/hour")
    for key, expected in [("key-a", 200), ("key-a", 429), ("key-b", 200)]:

        async def app(scope: Scope, receive: Receive, send: Send, key: str = key) -> None:
            scope["state"]["api_key_id"] = key
            await limited(scope, receive, send)

        assert call(app, "/models").status == expected


@pytest.mark.parametrize("path", ["/readyz", "/metrics", "/docs", "/static_content/swagger-ui.css"])
def test_public_paths_are_never_limited(path: str) -> None:
    limited = RateLimitMiddleware(ok_app, rate="1/hour")
    assert [call(limited, path).status for _ in range(3)] == [200, 200, 200]
    assert [call(limited, "/models").status for _ in range(2)] == [200, 429]


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [
        ("60/minute", (60, 60)),
        ("1/second", (1, 1)),
        ("1000/day", (1000, 86400)),
        ("5 per hour", (5, 3600)),
    ],
)
def test_rates_parse(rate: str, parsed: tuple[int, int]) -> None:
    limit = parse_rate(rate)
    assert (limit.amount, limit.get_expiry()) == parsed


@pytest.mark.parametrize(
    "rate", ["60", "60/min", "0/minute", "-1/minute", "a/minute", "60/minute ", "1/second;9/day"]
)
def test_malformed_rates_are_refused(rate: str) -> None:
    with pytest.raises(ValueError, match="60/minute"):
        RateLimitMiddleware(ok_app, rate=rate)
