from __future__ import annotations

import pytest
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from middleware.content_type import JsonBodyMiddleware
from tests.asgi import call, echo_body_app

BODY = b'{"prompt": "a cat"}'


def post(content_type: str | None, chunks: tuple[bytes, ...] = (BODY,)) -> tuple[int, bytes]:
    headers = {"Content-Length": str(sum(map(len, chunks)))}
    if content_type is not None:
        headers["Content-Type"] = content_type
    answer = call(JsonBodyMiddleware(echo_body_app), method="POST", headers=headers, chunks=chunks)
    return answer.status, answer.body


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_bodies_pass(content_type: str) -> None:
    assert post(content_type) == (200, BODY)


@pytest.mark.parametrize(
    "content_type",
    [
        # What a cross-origin page may send without a CORS preflight:
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data",  # no boundary: BentoML's parser answered 500
        "multipart/form-data; boundary=x",
        # and what else is not JSON:
        "application/vnd.bentoml+pickle",
        "application/octet-stream",
        None,
    ],
)
def test_any_other_body_is_a_415_before_the_app_reads_it(content_type: str | None) -> None:
    status, body = post(content_type)
    assert status == 415
    assert b"must be JSON" in body


def test_a_chunked_body_needs_json_too() -> None:
    answer = call(
        JsonBodyMiddleware(echo_body_app),
        method="POST",
        headers={"Transfer-Encoding": "chunked", "Content-Type": "text/plain"},
        chunks=(b"a", b"b"),
    )
    assert answer.status == 415


def test_requests_without_a_body_pass() -> None:
    answer = call(JsonBodyMiddleware(echo_body_app), method="POST", headers={"Content-Length": "0"})
    assert answer.status == 200
    assert call(JsonBodyMiddleware(echo_body_app), "/models").status == 200


FORM = "multipart/form-data; boundary=x"
FORMS = JsonBodyMiddleware(echo_body_app, multipart_paths=frozenset({"/v1/images/edits"}))


def form_post(path: str, method: str = "POST", **headers: str) -> int:
    sent = {"Content-Type": FORM, "Content-Length": "5", "Host": "127.0.0.1:3000", **headers}
    return call(FORMS, path, method=method, headers=sent, chunks=(b"--x--",)).status


def test_a_form_passes_only_where_a_compatibility_route_takes_one() -> None:
    assert form_post("/v1/images/edits") == 200
    assert form_post("/v1/images/generations") == 415
    assert form_post("/v1/images/edits", method="PUT") == 415


async def content_type_app(scope: Scope, receive: Receive, send: Send) -> None:
    declared = Headers(scope=scope).get("content-type", "")
    await Response(declared.encode())(scope, receive, send)


def test_a1111s_prefix_reads_an_undeclared_body_as_json() -> None:
    lenient = JsonBodyMiddleware(echo_body_app, undeclared_prefixes=("/sdapi/v1/",))
    headers = {"Content-Length": str(len(BODY))}
    sent = call(lenient, "/sdapi/v1/txt2img", method="POST", headers=headers, chunks=(BODY,))
    assert (sent.status, sent.body) == (200, BODY)
    # Declared for the app, whose parser reads JSON only when it says so.
    declaring = JsonBodyMiddleware(content_type_app, undeclared_prefixes=("/sdapi/v1/",))
    seen = call(declaring, "/sdapi/v1/options", method="POST", headers=headers, chunks=(BODY,))
    assert seen.body == b"application/json"
    # Declared as something else, or elsewhere, it is still refused.
    plain = {**headers, "Content-Type": "text/plain"}
    assert (
        call(lenient, "/sdapi/v1/txt2img", method="POST", headers=plain, chunks=(BODY,)).status
        == 415
    )
    assert (
        call(lenient, "/generate/image", method="POST", headers=headers, chunks=(BODY,)).status
        == 415
    )


def test_multipart_paths_must_be_paths() -> None:
    with pytest.raises(ValueError, match="must be paths"):
        JsonBodyMiddleware(echo_body_app, multipart_paths=frozenset({"v1/images/edits"}))
    with pytest.raises(ValueError, match="must be paths"):
        JsonBodyMiddleware(echo_body_app, undeclared_prefixes=("sdapi/v1/",))
