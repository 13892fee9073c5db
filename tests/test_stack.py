"""The whole middleware stack around the real service, in-process: auth, limits, ids, timing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.stack import middleware_stack, wrap
from imagegen.settings import Settings
from middleware.auth import ApiKeys
from tests.asgi import call, streaming_app
from tests.conftest import API_KEY, MAX_BODY

NO_KEY = {"Authorization": ""}  # overrides the client's default key


def generate(client: TestClient, headers: dict[str, str] | None = None, **fields: Any) -> Any:
    body = {"prompt": "a red apple", "seed": 1, **fields}
    return client.post("/generate/image", json=body, headers=headers)


def test_a_generation_with_a_key_carries_id_and_timings(client: TestClient) -> None:
    response = generate(
        client, headers={"Authorization": "", "X-API-Key": API_KEY, "X-Request-ID": "stack-1"}
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "stack-1"
    timings = [entry.split(";")[0] for entry in response.headers["server-timing"].split(", ")]
    # The generation's spans, then those the public process recorded, then the whole.
    assert timings == [
        *("queue", "inference", "hop", "setup", "decode"),
        *("admission", "encode", "total"),
    ]
    assert float(response.headers["x-process-time"]) > 0


@pytest.mark.parametrize("headers", [NO_KEY, {"Authorization": "Bearer wrong-key"}])
def test_no_generation_without_a_valid_key(client: TestClient, headers: dict[str, str]) -> None:
    response = generate(client, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["request_id"] == response.headers["x-request-id"]


# /metrics needs the served, multi-process set-up: test_e2e checks it is public.
@pytest.mark.parametrize(
    "path",
    ["/livez", "/readyz", "/healthz", "/docs", "/docs.json", "/static_content/swagger-ui.css"],
)
def test_public_paths_answer_without_a_key(client: TestClient, path: str) -> None:
    assert client.get(path, headers=NO_KEY).status_code == 200


def test_models_needs_a_key(client: TestClient) -> None:
    assert client.get("/models", headers=NO_KEY).status_code == 401
    assert client.get("/models").status_code == 200


def test_validation_errors_carry_the_request_id(client: TestClient) -> None:
    response = generate(client, width=100)
    assert response.status_code == 400
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert response.json()["detail"][0]["loc"] == ["width"]


def test_a_declared_large_body_is_a_413(client: TestClient) -> None:
    response = client.post(
        "/generate/image",
        content=b"x" * (MAX_BODY + 1),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["request_id"]


def test_a_chunked_large_body_is_a_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        chunk = 64 * 1024
        for _ in range(MAX_BODY // chunk + 1):
            yield b"x" * chunk
        yield b'"}'

    response = client.post(
        "/generate/image", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_the_spec_offers_the_authorize_schemes(client: TestClient) -> None:
    spec = client.get("/docs.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert {"bearer": []} in spec["security"]


def test_streamed_responses_pass_the_whole_stack_chunk_by_chunk() -> None:
    chunks = [b"first ", b"second ", b"third"]
    stack = middleware_stack(Settings(rate_limit="100/second"), ApiKeys.parse([API_KEY]))
    answer = call(wrap(streaming_app(chunks), stack), "/stream", headers={"X-API-Key": API_KEY})
    bodies = [m["body"] for m in answer.messages if m["type"] == "http.response.body" and m["body"]]
    assert answer.status == 200
    assert bodies == chunks
