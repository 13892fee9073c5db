from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive, Scope, Send

from middleware.body_limit import BodyLimitMiddleware
from tests.asgi import call, echo_body_app


def test_a_body_within_the_limit_reaches_the_app() -> None:
    answer = call(BodyLimitMiddleware(echo_body_app, max_bytes=10), chunks=[b"12345", b"67890"])
    assert (answer.status, answer.body) == (200, b"1234567890")


def test_a_declared_length_over_the_limit_is_refused_before_the_app_runs() -> None:
    called = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(True)

    answer = call(
        BodyLimitMiddleware(app, max_bytes=10),
        method="POST",
        headers={"Content-Length": "11"},
        chunks=[b"x" * 11],
    )
    assert answer.status == 413
    assert "10 bytes" in answer.json()["error"]
    assert called == []


def test_a_chunked_body_over_the_limit_is_cut_off_where_it_crosses() -> None:
    received: list[dict[str, object]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            received.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"app reply"})

    answer = call(
        BodyLimitMiddleware(app, max_bytes=10),
        method="POST",
        chunks=[b"x" * 6, b"x" * 6, b"x" * 6, b"x" * 6],
    )
    assert answer.status == 413
    assert b"app reply" not in answer.body
    # The app saw the first chunk, then a disconnect: the rest was never read.
    assert [m["type"] for m in received] == ["http.request", "http.disconnect"]


def test_a_lying_content_length_is_still_counted() -> None:
    answer = call(
        BodyLimitMiddleware(echo_body_app, max_bytes=10),
        method="POST",
        headers={"Content-Length": "3"},
        chunks=[b"x" * 8, b"x" * 8],
    )
    assert answer.status == 413


@pytest.mark.parametrize("max_bytes", [0, -1])
def test_a_non_positive_limit_is_refused(max_bytes: int) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        BodyLimitMiddleware(echo_body_app, max_bytes=max_bytes)


def test_a_body_slower_than_the_deadline_gets_408_and_the_app_a_disconnect() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (message := await receive())["type"] == "http.request":
            seen.append(message["type"])
        seen.append(message["type"])

    async def trickle() -> Message:
        await asyncio.sleep(0.05)  # a byte now and then, never the end
        return {"type": "http.request", "body": b"x", "more_body": True}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    limited = BodyLimitMiddleware(app, max_bytes=10**6, timeout=0.3)
    scope: Scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    asyncio.run(asyncio.wait_for(limited(scope, trickle, send), 5))
    assert sent[0]["status"] == 408
    assert b"within 0.3 s" in sent[1]["body"]
    assert seen[-1] == "http.disconnect" and 2 <= len(seen) <= 8


def test_once_the_body_is_whole_waiting_for_a_disconnect_has_no_deadline() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the whole body
        await receive()  # then wait, as a streaming answer listens for a disconnect
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await asyncio.sleep(0.4)  # past the deadline
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    limited = BodyLimitMiddleware(app, max_bytes=100, timeout=0.2)
    scope: Scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    asyncio.run(limited(scope, receive, send))
    assert sent[0]["status"] == 200
