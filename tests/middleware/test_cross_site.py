"""Cross-site requests are refused by `Origin` and `Sec-Fetch-Site`, what a browser cannot
fake; API clients, which send neither, pass."""

from __future__ import annotations

import pytest

from middleware.cross_site import CrossSiteMiddleware
from tests.asgi import call, echo_body_app

HOST = "127.0.0.1:3000"
GUARD = CrossSiteMiddleware(echo_body_app, allowed_origins=frozenset({"https://chat.example"}))


def status(method: str = "POST", path: str = "/sdapi/v1/interrupt", **headers: str) -> int:
    return call(GUARD, path, method=method, headers={"Host": HOST, **headers}).status


def test_api_clients_send_no_origin_and_pass() -> None:
    assert status() == 200


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:3001"])
def test_a_foreign_origin_is_refused_with_a_403_naming_it(origin: str) -> None:
    answer = call(
        GUARD, "/sdapi/v1/interrupt", method="POST", headers={"Host": HOST, "Origin": origin}
    )
    assert answer.status == 403
    assert origin.encode() in answer.body and b"IMAGEGEN_ALLOWED_ORIGINS" in answer.body


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_every_state_changing_method_is_guarded(method: str) -> None:
    assert status(method, "/jobs/x", Origin="https://evil.example") == 403


def test_reads_pass_from_anywhere() -> None:
    assert status("GET", "/models", Origin="https://evil.example") == 200


def test_the_servers_own_pages_and_allowed_origins_pass() -> None:
    assert status(Origin=f"http://{HOST}") == 200
    assert status(Origin="https://chat.example") == 200


def test_a_browsers_cross_site_mark_is_refused_even_without_an_origin() -> None:
    assert status(**{"Sec-Fetch-Site": "cross-site"}) == 403
    assert status(**{"Sec-Fetch-Site": "same-origin"}) == 200


@pytest.mark.parametrize("origin", ["chat.example", "https://chat.example/path", "ftp://x"])
def test_allowed_origins_must_be_origins(origin: str) -> None:
    with pytest.raises(ValueError, match="must hold origins"):
        CrossSiteMiddleware(echo_body_app, allowed_origins=frozenset({origin}))
