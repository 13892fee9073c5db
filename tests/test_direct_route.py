"""The generation APIs' direct route answers as BentoML's own handling of them does: every
request below is sent down both ways through the whole service in-process, and the answers
compared (status, headers, body), so any difference between the two is a failure here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import bentoml
import pytest
from bentoml._internal.container import BentoMLContainer
from bentoml.exceptions import NotFound, ServiceUnavailable
from starlette.requests import ClientDisconnect
from starlette.testclient import TestClient

from app import direct_route
from app.direct_route import DirectRoute
from middleware.request_metrics import instruments
from service import Generator, ImageGeneration
from tests.asgi import call, ok_app
from tests.test_errors_e2e import LONG_PROMPT

# Headers that differ from one request to the next, whichever way it goes.
PER_REQUEST = {"x-request-id", "server-timing", "x-process-time", "date"}
JSON = {"Content-Type": "application/json"}

BODIES: list[tuple[str, bytes]] = [
    ("/generate/image", b'{"prompt": "a red apple", "seed": 3}'),
    ("/generate/image", b'{"prompt": "a red apple", "seed": 3, "output_format": "webp"}'),
    ("/generate/images", b'{"prompt": "a red apple", "seed": 3, "num_images": 2}'),
    ("/generate/image", b'{"prompt": "a", "width": 65}'),
    ("/generate/images", b'{"prompt": "a", "guidance_scale": NaN}'),
    ("/generate/image", b'{"prompt": "a", "steps": 4}'),
    ("/generate/image", b'{"prompt": "a", "width": "wide", "height": -8}'),
    ("/generate/image", b'{"prompt": '),
    ("/generate/image", b"\xff\xfe"),
    ("/generate/image", b"[1]"),
    ("/generate/image", b"null"),
    ("/generate/image", b""),
    ("/generate/image", f'{{"prompt": "{LONG_PROMPT}"}}'.encode()),
    ("/generate/image", b'{"prompt": "a", "scheduler": "no-such-scheduler"}'),
    ("/generate/image", b'{"prompt": "a", "model": "no-such-model"}'),
    ("/generate/images", b'{"prompt": "a", "width": 2048, "height": 2048, "num_images": 8}'),
]


def served_route(client: TestClient) -> DirectRoute:
    """The service's DirectRoute, found in its built middleware chain."""
    client.get("/livez")  # the chain is built on the first request
    layer: Any = client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(layer, DirectRoute):
        layer = layer.app
    return layer


@pytest.fixture
def both_ways(client: TestClient) -> Iterator[Any]:
    """Sends a request down the direct route, then down BentoML's handling (the route off)."""
    route = served_route(client)

    def send(path: str, body: bytes, headers: dict[str, str] = JSON) -> list[Any]:
        answers = []
        for on in (True, False):
            route.on = on
            answers.append(client.post(path, content=body, headers=headers))
        route.on = True
        return answers

    yield send
    route.on = True


def comparable(response: Any) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in response.headers.items() if k not in PER_REQUEST}
    if response.headers["content-type"] != "application/json":
        return response.status_code, headers, response.content
    # Bodies that carry timings vary in length with them.
    del headers["content-length"]
    body = response.json()
    for varying in ("request_id", "timings"):
        body.pop(varying, None)
    return response.status_code, headers, body


@pytest.mark.parametrize(("path", "body"), BODIES, ids=[repr(body[:40]) for _, body in BODIES])
def test_the_direct_route_answers_as_bentoml_does(both_ways: Any, path: str, body: bytes) -> None:
    direct, long_way = both_ways(path, body)
    assert comparable(direct) == comparable(long_way)
    assert "traceback" not in direct.text.lower()


def test_a_failing_handler_answers_as_bentoml_does(
    both_ways: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = bentoml.get_current_service().gateway

    async def broken(*_: Any) -> Any:
        raise RuntimeError("internal detail /opt/secret/path")

    monkeypatch.setattr(gateway, "generate", broken)
    direct, long_way = both_ways("/generate/image", b'{"prompt": "a"}')
    assert direct.status_code == 500
    assert comparable(direct) == comparable(long_way)
    assert "secret" not in direct.text


def test_the_request_metrics_count_it_by_its_route(both_ways: Any) -> None:
    """The router leaves the matched route in the scope, and the metrics label by it."""
    answers, _ = instruments("imagegen")
    counted = answers.labels("/generate/image", "POST", "400")
    before = counted._value.get()
    both_ways("/generate/image", b'{"prompt": "a", "width": 65}')
    assert counted._value.get() == before + 2


def test_the_handler_sees_the_request_in_bentomls_context(
    both_ways: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = bentoml.get_current_service().gateway
    seen: list[str] = []
    generate = gateway.generate

    async def watched(request: Any, http_request: Any) -> Any:
        seen.append(bentoml.Context().request.headers["x-probe"])
        return await generate(request, http_request)

    monkeypatch.setattr(gateway, "generate", watched)
    direct, long_way = both_ways(
        "/generate/image", b'{"prompt": "a", "seed": 1}', {**JSON, "X-Probe": "p"}
    )
    assert direct.status_code == long_way.status_code == 200
    assert seen == ["p", "p"]


@pytest.mark.parametrize(
    ("error", "status", "logged"),
    [
        (RuntimeError("a bug"), 500, True),
        (ServiceUnavailable("overloaded"), 503, True),
        (NotFound("no such thing"), 404, False),
        (ClientDisconnect(), 500, False),  # a client gone mid-upload: the access line says so
    ],
)
def test_failures_are_answered_and_logged_as_bentoml_does(
    monkeypatch: pytest.MonkeyPatch, error: Exception, status: int, logged: bool
) -> None:
    lines: list[BaseException | None] = []
    monkeypatch.setattr(
        direct_route.logger, "error", lambda *_, exc_info=None: lines.append(exc_info)
    )
    answer = direct_route.bentoml_error(error)
    assert answer.status_code == status
    assert lines == ([error] if logged else [])


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/generate/image", {}),
        ("POST", "/generate/image/", JSON),
        ("POST", "/upscale", JSON),
        ("POST", "/generate/image", {"Content-Type": "text/plain"}),
    ],
)
def test_other_requests_go_on_to_bentoml(method: str, path: str, headers: dict[str, str]) -> None:
    route = DirectRoute(ok_app, service=ImageGeneration, apis=["generate_image"])
    answer = call(route, path, method=method, headers=headers, chunks=[b"{}"])
    assert answer.body == b"ok"


def test_with_bentomls_cors_on_every_request_goes_on_to_it() -> None:
    """BentoML's CORS middleware runs after this one: its headers must not be skipped."""
    cors = BentoMLContainer.http.cors.enabled
    was = cors.get()
    cors.set(True)  # (the provider's `patch` leaves a nested item as it is)
    try:
        route = DirectRoute(ok_app, service=ImageGeneration, apis=["generate_image"])
    finally:
        cors.set(was)
    answer = call(route, "/generate/image", method="POST", headers=JSON, chunks=[b"{}"])
    assert answer.body == b"ok"


@pytest.mark.parametrize(
    ("service", "api", "words"),
    [
        (ImageGeneration, "nothing", "must name APIs of imagegen"),
        (Generator, "events", "must not be batched, streamed"),
        (Generator, "generate_sd_tiny", "must not be batched, streamed"),
    ],
)
def test_only_plain_apis_are_taken(service: Any, api: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        DirectRoute(ok_app, service=service, apis=[api])
