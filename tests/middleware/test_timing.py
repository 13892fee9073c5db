from __future__ import annotations

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from middleware.timing import TimingMiddleware, record
from tests.asgi import call, ok_app, streaming_app


def test_total_and_process_time_are_set() -> None:
    answer = call(TimingMiddleware(ok_app))
    [name, duration] = answer.headers["server-timing"].split(";dur=")
    assert name == "total" and float(duration) >= 0
    assert float(answer.headers["x-process-time"]) >= 0


def test_app_timings_are_kept_before_total() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        timing = {"Server-Timing": "queue;dur=1.0, inference;dur=20.0"}
        await Response(b"img", headers=timing)(scope, receive, send)

    entries = call(TimingMiddleware(app)).headers["server-timing"].split(", ")
    assert entries[:2] == ["queue;dur=1.0", "inference;dur=20.0"]
    assert entries[2].startswith("total;dur=")


def test_recorded_spans_follow_the_apps_and_precede_total() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        record(scope, "admission", 0.0012)
        record(scope, "encode", 0.5)
        await Response(b"img", headers={"Server-Timing": "queue;dur=1.0"})(scope, receive, send)

    entries = call(TimingMiddleware(app)).headers["server-timing"].split(", ")
    assert entries[:3] == ["queue;dur=1.0", "admission;dur=1.2", "encode;dur=500.0"]
    assert entries[3].startswith("total;dur=")


def test_recording_without_the_middleware_is_a_no_op() -> None:
    scope: Scope = {"type": "http", "state": {}}
    record(scope, "admission", 0.1)
    assert scope == {"type": "http", "state": {}}


def test_streamed_bodies_pass_through_chunk_by_chunk() -> None:
    chunks = [b"a", b"b", b"c"]
    answer = call(TimingMiddleware(streaming_app(chunks)))
    bodies = [m["body"] for m in answer.messages if m["type"] == "http.response.body" and m["body"]]
    assert bodies == chunks
