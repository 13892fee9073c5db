from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.responses import PlainTextResponse
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from middleware.error_body import MAX_ERROR_BODY, ErrorBodyMiddleware
from middleware.request_id import RequestIdMiddleware
from tests.asgi import call, error_app, ok_app, streaming_app


def shaped(app: ASGIApp) -> ASGIApp:
    return RequestIdMiddleware(ErrorBodyMiddleware(app))


@pytest.mark.parametrize("status", [400, 401, 404, 413, 415, 422, 429, 500, 503, 504])
def test_json_error_objects_carry_the_request_id(status: int) -> None:
    answer = call(shaped(error_app(status, {"error": "no"})), headers={"X-Request-ID": "r1"})
    assert answer.status == status
    assert answer.json() == {"error": "no", "request_id": "r1"}
    assert int(answer.headers["content-length"]) == len(answer.body)


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_always_say_when_to_retry(status: int) -> None:
    assert call(shaped(error_app(status, {"error": "busy"}))).headers["retry-after"] == "5"


def test_a_retry_after_already_set_is_kept() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("busy", 429, headers={"Retry-After": "30"})(scope, receive, send)

    assert call(shaped(app)).headers["retry-after"] == "30"


def test_the_router_plain_text_404_and_405_become_json_sentences() -> None:
    router = Router([Route("/docs", lambda request: PlainTextResponse("ok"), methods=["GET"])])
    missing = call(shaped(router), "/nowhere")
    assert missing.status == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json()["error"] == "There is no `/nowhere` here; `/docs` lists the API."
    assert missing.json()["request_id"] == missing.headers["x-request-id"]
    wrong_method = call(shaped(router), "/docs", method="DELETE")
    assert wrong_method.status == 405
    assert wrong_method.json()["error"].startswith("`DELETE` is not allowed on `/docs`")
    assert "GET" in wrong_method.json()["error"]


def test_field_errors_become_the_sentence() -> None:
    detail = [
        {"loc": ["width"], "msg": "`width` must be a multiple of 8, but is 65.", "type": "m"},
        {"loc": ["steps"], "msg": "`steps` is not a field.", "type": "extra_forbidden"},
    ]
    body = {"error": "2 validation errors for ImageRequestIODescriptor", "detail": detail}
    answer = call(shaped(error_app(400, body)))
    assert answer.json()["error"] == (
        "`width` must be a multiple of 8, but is 65. `steps` is not a field."
    )
    assert answer.json()["detail"] == detail


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([{"error": "pickle is not allowed"}], "pickle is not allowed"),  # BentoML's array
        ({"detail": "Not Found"}, "Not Found"),  # FastAPI's HTTPException
        (
            {"detail": [{"loc": ["q"], "msg": "`q` is required.", "type": "missing"}]},
            "`q` is required.",
        ),  # FastAPI's 422
        ([1, 2], "Bad Request."),
        ({"message": "odd"}, "Bad Request."),
    ],
)
def test_other_shapes_become_one_object(body: Any, error: str) -> None:
    answer = call(shaped(error_app(400, body)))
    assert isinstance(answer.json(), dict)
    assert answer.json()["error"] == error
    assert answer.json()["request_id"]


def test_success_bodies_are_untouched() -> None:
    assert call(shaped(error_app(200, [1, 2]))).json() == [1, 2]
    assert call(shaped(ok_app)).body == b"ok"


def test_a_streamed_error_over_the_cap_passes_through_unchanged() -> None:
    chunks = [b"x" * (MAX_ERROR_BODY // 2)] * 3

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    answer = call(shaped(app))
    assert answer.status == 500
    assert answer.body == b"".join(chunks)


def test_streamed_success_passes_chunk_by_chunk() -> None:
    chunks = [b"one ", b"two ", b"three"]
    answer = call(shaped(streaming_app(chunks)))
    bodies = [m["body"] for m in answer.messages if m["type"] == "http.response.body" and m["body"]]
    assert bodies == chunks


def test_the_retry_after_option_is_checked() -> None:
    with pytest.raises(ValueError, match="retry_after"):
        ErrorBodyMiddleware(ok_app, retry_after=0)


def test_an_error_answer_is_valid_json_even_from_plain_text() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("Internal Server Error", 500)(scope, receive, send)

    assert json.loads(call(shaped(app)).body)["error"] == "Internal Server Error."


def test_a_dialect_reshapes_errors_under_its_prefix_only() -> None:
    def nested(status: int, document: dict[str, Any]) -> dict[str, Any]:
        return {"error": {"message": document["error"], "status": status}}

    app = RequestIdMiddleware(
        ErrorBodyMiddleware(error_app(400, {"error": "bad"}), dialects={"/v1/": nested})
    )
    assert call(app, "/v1/images/generations").json() == {
        "error": {"message": "bad", "status": 400}
    }
    assert call(app, "/generate/image").json()["error"] == "bad"


def test_dialects_must_be_keyed_by_paths() -> None:
    with pytest.raises(ValueError, match="`dialects` must be keyed by paths"):
        ErrorBodyMiddleware(ok_app, dialects={"v1": lambda status, document: document})
