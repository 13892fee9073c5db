"""Every error the service or BentoML answers, over real HTTP to a real `bentoml serve`: one
JSON shape with `error` and `request_id`, Retry-After on 429 and 503, and no way for a
cross-origin "simple request" to start a generation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from harness.servers import Server, bentoml_serve
from tests.conftest import API_KEY, AUTH, MAX_BODY, SERVER_MAX_CONCURRENCY
from tests.test_jobs_e2e import cancelled_images

pytestmark = pytest.mark.e2e
JSON = {"Content-Type": "application/json"}
LONG_PROMPT = "a lighthouse on a cliff at sunset, " * 4  # ~140 characters, over 77 tokens


def assert_error_shape(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body["error"], str) and body["error"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    if response.status_code in (429, 503):
        assert int(response.headers["retry-after"]) >= 1
    return body


# (method, path, headers, body, status, words the error must contain)
CASES: list[tuple[str, str, dict[str, str], bytes | None, int, str]] = [
    (
        "POST",
        "/generate/image",
        {**AUTH, **JSON},
        b'{"prompt": "a", "width": 65}',
        400,
        "`width` must be a multiple of 8, but is 65.",
    ),
    (
        "POST",
        "/generate/images",
        {**AUTH, **JSON},
        b'{"prompt": "a", "guidance_scale": NaN}',
        400,
        "`guidance_scale` must be a finite number, but is nan.",
    ),
    (
        "POST",
        "/generate/image",
        {**AUTH, **JSON},
        b'{"prompt": "a", "steps": 4}',
        400,
        "`steps` is not a field",
    ),
    ("POST", "/generate/image", {**AUTH, **JSON}, b'{"prompt": ', 400, "Invalid JSON"),
    ("POST", "/generate/image", {**AUTH, **JSON}, b"[1]", 400, "must be a JSON object"),
    (
        "POST",
        "/generate/image",
        {**AUTH, **JSON},
        f'{{"prompt": "{LONG_PROMPT}"}}'.encode(),
        400,
        "`prompt` must be at most 77 tokens",
    ),
    ("POST", "/generate/image", JSON, b'{"prompt": "a"}', 401, "API key"),
    ("GET", "/nowhere", AUTH, None, 404, "There is no `/nowhere` here"),
    ("DELETE", "/models", AUTH, None, 405, "`DELETE` is not allowed on `/models`"),
    ("GET", "/generate/image", AUTH, None, 405, "`GET` is not allowed on `/generate/image`"),
    (
        "POST",
        "/generate/image",
        {**AUTH, **JSON},
        b"x" * (MAX_BODY + 1),
        413,
        f"at most {MAX_BODY} bytes",
    ),
    (
        "POST",
        "/generate/image",
        {**AUTH, "Content-Type": "application/vnd.bentoml+pickle"},
        b"\x80\x04N.",
        415,
        "must be JSON",
    ),
    (
        "POST",
        "/generate/image",
        {**AUTH, "Content-Type": "multipart/form-data"},
        b"x",
        415,
        "must be JSON",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "words"),
    CASES,
    ids=[f"{case[4]}-{case[5][:24]}" for case in CASES],
)
def test_errors_are_json_with_the_request_id(
    server: Server,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    status: int,
    words: str,
) -> None:
    response = httpx.request(
        method, f"{server.url}{path}", headers=headers, content=body, timeout=60
    )
    assert response.status_code == status, response.text
    assert words in assert_error_shape(response)["error"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain;charset=UTF-8", '{"prompt": "a cat"}'),
        ("application/x-www-form-urlencoded", "prompt=a+cat"),
        (
            "multipart/form-data; boundary=b",
            '--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na cat\r\n--b--\r\n',
        ),
    ],
)
def test_a_cross_origin_simple_request_cannot_start_a_generation(
    open_server: Server, content_type: str, body: str
) -> None:
    """What any web page may make a browser send to a local server without a CORS preflight:
    with auth off, the `Origin` it cannot fake refuses it, on every API (A1111's, which
    takes JSON without a `Content-Type`, included)."""
    # From an address of its own, so the open server's per-address rate limit, which other
    # tests count on, is not spent here.
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport) as client:
        for path in ("/generate/image", "/sdapi/v1/txt2img", "/sdapi/v1/interrupt"):
            response = client.post(
                f"{open_server.url}{path}",
                content=body,
                headers={"Content-Type": content_type, "Origin": "https://evil.example"},
            )
            assert response.status_code == 403, (path, response.text)
            assert "https://evil.example" in response.json()["error"]
            assert_error_shape(response)


def test_concurrency_429_is_ours_with_retry_after_and_an_access_line(server: Server) -> None:
    slow = {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 20}
    count = 2 * SERVER_MAX_CONCURRENCY + 2

    def post(seed: int) -> httpx.Response:
        return httpx.post(
            f"{server.url}/generate/image",
            json={**slow, "seed": seed},
            headers={**AUTH, "X-Request-ID": f"overload-{seed}"},
            timeout=120,
        )

    with ThreadPoolExecutor(max_workers=count) as pool:
        responses = list(pool.map(post, range(count)))
    refused = [r for r in responses if r.status_code == 429]
    assert refused, [r.status_code for r in responses]
    assert "requests in flight" in assert_error_shape(refused[0])["error"]
    request_id = refused[0].headers["x-request-id"]
    deadline = time.monotonic() + 10
    while f'"request_id": "{request_id}"' not in server.log.read_text():
        assert time.monotonic() < deadline, "no access line for the 429"
        time.sleep(0.2)


def test_a_client_error_logs_no_error_line(server: Server) -> None:
    httpx.post(
        f"{server.url}/generate/image",
        headers={**AUTH, **JSON, "X-Request-ID": "client-error-log"},
        content=b'{"prompt": "a", "height": 63}',
    )
    time.sleep(0.5)
    lines = [line for line in server.log.read_text().splitlines() if "client-error-log" in line]
    assert lines and all('"level": "INFO"' in line for line in lines), lines
    assert "Traceback" not in server.log.read_text()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose requests must be answered within one second."""
    log = tmp_path_factory.mktemp("slow-server") / "bentoml-serve.log"
    with bentoml_serve(log, timeout="1", warmup="false") as running:
        yield running


def test_a_request_past_the_timeout_is_our_json_504(slow_server: Server) -> None:
    response = httpx.post(
        f"{slow_server.url}/generate/image",
        json={"prompt": "a", "width": 512, "height": 512, "num_inference_steps": 25},
        headers=AUTH,
        timeout=60,
    )
    assert response.status_code == 504
    error = assert_error_shape(response)["error"]
    assert "longer than 1 s; its generation was cancelled" in error
    deadline = time.monotonic() + 30  # the generator service counts it cancelled
    while cancelled_images(slow_server) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_the_api_key_never_shows_in_an_error(server: Server) -> None:
    response = httpx.get(f"{server.url}/nowhere", headers=AUTH)
    assert API_KEY not in response.text
