from __future__ import annotations

import asyncio

import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from middleware.request_id import REQUEST_ID, RequestIdMiddleware
from tests.asgi import call, ok_app, receive_nothing, send_nothing, streaming_app


@pytest.mark.parametrize("incoming", ["abc", "A.b-c_9", "x" * 128])
def test_a_valid_incoming_id_is_kept(incoming: str) -> None:
    answer = call(RequestIdMiddleware(ok_app), headers={"X-Request-ID": incoming})
    assert answer.headers["x-request-id"] == incoming


@pytest.mark.parametrize("incoming", ["", "x" * 129, "a b", "a\r\nb", "<script>", "ü", "a/b"])
def test_an_invalid_incoming_id_is_replaced(incoming: str) -> None:
    answer = call(RequestIdMiddleware(ok_app), headers={"X-Request-ID": incoming})
    assert answer.headers["x-request-id"] != incoming
    assert len(answer.headers["x-request-id"]) == 32


def test_each_request_gets_its_own_id() -> None:
    first = call(RequestIdMiddleware(ok_app)).headers["x-request-id"]
    assert call(RequestIdMiddleware(ok_app)).headers["x-request-id"] != first


def test_the_app_sees_the_id_in_state_and_context() -> None:
    seen: dict[str, object] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(state=scope["state"]["request_id"], context=REQUEST_ID.get())
        await PlainTextResponse("ok")(scope, receive, send)

    answer = call(RequestIdMiddleware(app), headers={"X-Request-ID": "req-1"})
    assert seen == {"state": "req-1", "context": "req-1"}
    assert answer.status == 200
    assert REQUEST_ID.get() is None


def test_streamed_bodies_pass_through_chunk_by_chunk() -> None:
    chunks = [b"one ", b"two ", b"three"]
    answer = call(RequestIdMiddleware(streaming_app(chunks)))
    bodies = [m["body"] for m in answer.messages if m["type"] == "http.response.body" and m["body"]]
    assert bodies == chunks


def test_non_http_scopes_pass_through() -> None:
    seen = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    asyncio.run(RequestIdMiddleware(app)({"type": "lifespan"}, receive_nothing, send_nothing))
    assert seen == ["lifespan"]
