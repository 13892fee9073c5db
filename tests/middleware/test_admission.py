from __future__ import annotations

import asyncio
import threading
import time

import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

from middleware.admission import AdmissionMiddleware
from tests.asgi import ok_app, receive_nothing


def scope(path: str = "/generate/image", method: str = "POST") -> Scope:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


async def answer(app: AdmissionMiddleware, path: str = "/generate/image") -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope(path, "GET" if path == "/readyz" else "POST"), receive_nothing, send)
    return sent


def status(sent: list[Message]) -> int:
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


def test_requests_over_the_limit_get_429_at_once_and_the_slot_frees() -> None:
    release = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != "/readyz":
            await release.wait()
        await PlainTextResponse("ok")(scope, receive, send)

    admission = AdmissionMiddleware(slow, max_concurrency=2, timeout=10)

    async def scenario() -> list[int]:
        first = [asyncio.ensure_future(answer(admission)) for _ in range(2)]
        await asyncio.sleep(0.01)
        refused = await answer(admission)
        assert dict(refused[0]["headers"])[b"retry-after"] == b"2"
        probe = await asyncio.wait_for(answer(admission, "/readyz"), 1)  # probes are exempt
        assert status(probe) == 200
        release.set()
        done = [status(sent) for sent in await asyncio.gather(*first)]
        later = status(await answer(admission))
        return [*done, status(refused), later]

    assert asyncio.run(scenario()) == [200, 200, 429, 200]


def test_a_request_past_the_timeout_gets_504_without_waiting_for_its_thread() -> None:
    thread_done = threading.Event()

    async def blocking(scope: Scope, receive: Receive, send: Send) -> None:
        # A synchronous handler, as BentoML runs one: cancellation cannot stop the thread.
        await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.5)
        thread_done.set()
        await PlainTextResponse("late")(scope, receive, send)

    admission = AdmissionMiddleware(blocking, max_concurrency=1, timeout=0.1)

    async def scenario() -> tuple[int, bool, int, int]:
        sent: list[Message] = []
        answered = asyncio.Event()

        async def send(message: Message) -> None:
            sent.append(message)
            answered.set()

        call = asyncio.ensure_future(admission(scope(), receive_nothing, send))
        await asyncio.wait_for(answered.wait(), 0.4)  # well before the thread's 0.5 s
        finished_then = thread_done.is_set()
        # The thread still holds its slot: the next request is refused until it is free.
        busy = status(await answer(admission))
        await call
        later = status(await answer(admission))
        return status(sent), finished_then, busy, later

    # Once the thread is free, a request is admitted again (and, as slow, times out again).
    assert asyncio.run(scenario()) == (504, False, 429, 504)


def test_an_answer_that_started_in_time_is_finished() -> None:
    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.2)
        await send({"type": "http.response.body", "body": b"done"})

    sent = asyncio.run(answer(AdmissionMiddleware(streaming, max_concurrency=1, timeout=0.05)))
    assert status(sent) == 200
    assert sent[-1]["body"] == b"done"


def test_an_app_error_is_raised_to_the_outer_stack() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    admission = AdmissionMiddleware(failing, max_concurrency=1, timeout=1)
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(answer(admission))
    assert admission.in_flight == 0


def test_nothing_the_app_sends_after_the_504_reaches_the_client() -> None:
    async def late(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.2)
        await PlainTextResponse("late")(scope, receive, send)

    sent = asyncio.run(answer(AdmissionMiddleware(late, max_concurrency=1, timeout=0.05)))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert status(sent) == 504


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"max_concurrency": 0, "timeout": 1}, "max_concurrency"),
        ({"max_concurrency": 1, "timeout": 0}, "timeout"),
    ],
)
def test_options_are_checked(options: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        AdmissionMiddleware(ok_app, **options)  # type: ignore[arg-type]


def test_one_client_over_its_own_limit_gets_429_while_others_are_admitted() -> None:
    release = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await PlainTextResponse("ok")(scope, receive, send)

    admission = AdmissionMiddleware(slow, max_concurrency=4, timeout=10, per_client=1)

    async def as_key(key: str) -> list[Message]:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        keyed = {**scope(), "state": {"api_key_id": key}}
        await admission(keyed, receive_nothing, send)
        return sent

    async def scenario() -> tuple[int, bytes, int]:
        held = asyncio.ensure_future(as_key("a"))
        await asyncio.sleep(0.01)
        refused = await as_key("a")
        other = asyncio.ensure_future(as_key("b"))
        await asyncio.sleep(0.01)
        release.set()
        await held
        return status(refused), refused[1]["body"], status(await other)

    refused, body, other = asyncio.run(scenario())
    assert (refused, other) == (429, 200)
    assert b"This API key has its limit of 1 requests in flight" in body
    assert admission.by_client == {}  # nothing kept for clients with nothing in flight


def test_a_per_client_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="`per_client` must be at least 1"):
        AdmissionMiddleware(ok_app, max_concurrency=4, timeout=1, per_client=0)
