from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.logs import configure_logging
from middleware.access_log import AccessLogMiddleware
from middleware.request_id import RequestIdMiddleware
from tests.asgi import call, echo_body_app, ok_app, streaming_app

BODY = json.dumps({"prompt": "my secret portrait", "negative_prompt": "blur", "seed": 1}).encode()


@pytest.fixture
def log_lines() -> Iterator[Any]:
    """The JSON lines the project's loggers write, parsed."""
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines() if line]

    yield read
    configure_logging("INFO")


def logged(app: Any, **request: Any) -> Any:
    return AccessLogMiddleware(RequestIdMiddleware(app), **request)


async def image_app(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(b"png", headers={"X-Seed": "42", "X-Model": "sd-tiny:v1"})(scope, receive, send)


def test_one_json_line_per_request_with_the_fields(log_lines: Any) -> None:
    call(
        logged(image_app),
        "/generate/image",
        method="POST",
        chunks=[BODY],
        headers={"X-Request-ID": "rid-1"},
    )
    [line] = log_lines()
    assert line["logger"] == "imagegen.access"
    assert line["request_id"] == "rid-1"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/generate/image", 200)
    assert (line["model"], line["seed"]) == ("sd-tiny:v1", 42)
    assert line["bytes_out"] == 3 and line["client"] == "127.0.0.1"
    assert line["duration_ms"] >= 0 and "time" in line


def test_bytes_in_counts_the_request_body(log_lines: Any) -> None:
    call(logged(echo_body_app), "/x", method="POST", chunks=[b"12345", b"678"])
    assert log_lines()[0]["bytes_in"] == 8


def test_prompts_and_keys_stay_out_of_the_log_by_default(log_lines: Any) -> None:
    call(
        logged(echo_body_app),
        "/generate/image",
        method="POST",
        chunks=[BODY],
        headers={"Authorization": "Bearer k-secret-value"},
    )
    lines = log_lines()
    assert [line["path"] for line in lines] == ["/generate/image"]
    text = json.dumps(lines)
    assert "my secret portrait" not in text
    assert "k-secret-value" not in text


def test_prompts_are_logged_when_asked(log_lines: Any) -> None:
    call(logged(echo_body_app, log_prompts=True), "/generate/image", method="POST", chunks=[BODY])
    [line] = log_lines()
    assert (line["prompt"], line["negative_prompt"]) == ("my secret portrait", "blur")


def test_probes_are_not_logged(log_lines: Any) -> None:
    for path in ("/readyz", "/livez", "/metrics", "/models"):
        call(logged(ok_app), path)
    assert [line["path"] for line in log_lines()] == ["/models"]


def test_an_unhandled_error_is_logged_once_with_traceback_and_answered_500(
    log_lines: Any,
) -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("database password is hunter2")

    answer = call(logged(broken), "/models", headers={"X-Request-ID": "rid-9"})
    assert answer.status == 500
    assert "hunter2" not in answer.body.decode()
    assert answer.json()["request_id"] == "rid-9"
    [line] = log_lines()
    assert line["level"] == "ERROR" and line["status"] == 500 and line["request_id"] == "rid-9"
    assert "RuntimeError" in line["traceback"]


def test_streamed_bodies_pass_through_chunk_by_chunk(log_lines: Any) -> None:
    chunks = [b"a", b"bb", b"ccc"]
    answer = call(logged(streaming_app(chunks)), "/stream")
    bodies = [m["body"] for m in answer.messages if m["type"] == "http.response.body" and m["body"]]
    assert bodies == chunks
    assert log_lines()[0]["bytes_out"] == 6
