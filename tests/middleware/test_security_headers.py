from __future__ import annotations

import pytest
from starlette.responses import HTMLResponse
from starlette.types import Receive, Scope, Send

from middleware.security_headers import API_POLICY, SecurityHeadersMiddleware
from tests.asgi import call, ok_app


def test_every_answer_gets_nosniff_and_the_api_policy() -> None:
    answer = call(SecurityHeadersMiddleware(ok_app))
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["content-security-policy"] == API_POLICY


def test_a_page_keeps_its_own_policy() -> None:
    async def page(scope: Scope, receive: Receive, send: Send) -> None:
        policy = "default-src 'self'; frame-ancestors 'none'"
        await HTMLResponse("<p>", headers={"Content-Security-Policy": policy})(scope, receive, send)

    answer = call(SecurityHeadersMiddleware(page))
    assert answer.headers["content-security-policy"] == "default-src 'self'; frame-ancestors 'none'"
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_a_policy_that_lets_pages_frame_the_answers_is_refused() -> None:
    with pytest.raises(ValueError, match="must set `frame-ancestors`"):
        SecurityHeadersMiddleware(ok_app, policy="default-src 'none'")
