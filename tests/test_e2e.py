"""Against a real `bentoml serve` process over real HTTP on loopback."""

from __future__ import annotations

import http.client
import io
import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bentoml
import httpx
import numpy as np
import pytest
from PIL import Image

from harness.servers import Server, bentoml_serve, failed_start
from models.recipes import SD_TINY
from models.store import ensure_built
from tests.conftest import API_KEY, AUTH, MAX_BODY, METRICS_AUTH, SERVER_MAX_CONCURRENCY

pytestmark = pytest.mark.e2e


def generate(server: Server, **fields: Any) -> httpx.Response:
    body = {"prompt": "a lighthouse", **fields}
    return httpx.post(f"{server.url}/generate/image", json=body, headers=AUTH, timeout=120)


def test_probes_answer(server: Server) -> None:
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert httpx.get(f"{server.url}/livez").status_code == 200


def test_generates_a_png_with_seed_and_model_headers(server: Server) -> None:
    response = generate(server, seed=21)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "21"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (64, 64)
    assert json.loads(image.text["parameters"])["seed"] == 21


def concurrently(server: Server, seeds: list[int]) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=len(seeds)) as pool:
        responses = list(pool.map(lambda seed: generate(server, seed=seed), seeds))
    assert [response.status_code for response in responses] == [200] * len(seeds)
    return responses


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=int)


def test_concurrent_requests_are_batched_and_keep_their_own_images(server: Server) -> None:
    """Batched, each request still gets the image of its own seed: its lone image within
    1/255 per pixel. Bounded: at most three rounds to see BentoML's dispatcher batch."""
    seeds = list(range(1, SERVER_MAX_CONCURRENCY + 1))
    alone = {seed: pixels(generate(server, seed=seed).content) for seed in seeds}
    batch_sizes = set()
    for _ in range(3):
        for seed, response in zip(seeds, concurrently(server, seeds), strict=True):
            assert response.headers["x-seed"] == str(seed)
            assert np.abs(pixels(response.content) - alone[seed]).max() <= 1
            batch_sizes.add(int(response.headers["x-batch-size"]))
        if max(batch_sizes) > 1:
            break
    assert max(batch_sizes) > 1, "no request was batched"


def test_sustained_concurrent_load_loses_no_request(server: Server) -> None:
    """Past the 100 requests after which BentoML's client to a dependency, by default,
    replaces its connections under the requests in flight."""

    def one(seed: int) -> int:
        return generate(server, seed=seed, num_inference_steps=1).status_code

    with ThreadPoolExecutor(max_workers=SERVER_MAX_CONCURRENCY) as pool:
        statuses = list(pool.map(one, range(150)))
    assert statuses == [200] * 150


@pytest.fixture(scope="module")
def unbatched_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Batching off, auth off."""
    log = tmp_path_factory.mktemp("unbatched-server") / "bentoml-serve.log"
    with bentoml_serve(log, api_keys="", max_batch_size="1") as running:
        yield running


def test_unbatched_concurrent_requests_return_the_bytes_of_sequential_ones(
    unbatched_server: Server,
) -> None:
    seeds = [1, 2, 3, 4]
    sequential = [generate(unbatched_server, seed=seed).content for seed in seeds]
    concurrent = concurrently(unbatched_server, seeds)
    assert [response.content for response in concurrent] == sequential
    assert {response.headers["x-batch-size"] for response in concurrent} == {"1"}
    assert len(set(sequential)) == len(seeds)


def test_overload_is_answered_429_not_queued(server: Server) -> None:
    # Slow enough (a few seconds in all) that the first requests still hold their slots when
    # the rest arrive; bounded to twice the concurrency limit plus two.
    slow = {"width": 256, "height": 256, "num_inference_steps": 20}
    count = 2 * SERVER_MAX_CONCURRENCY + 2
    with ThreadPoolExecutor(max_workers=count) as pool:
        responses = list(pool.map(lambda seed: generate(server, seed=seed, **slow), range(count)))
    statuses = [response.status_code for response in responses]
    assert set(statuses) == {200, 429}
    assert statuses.count(200) >= 1
    rejected = next(response for response in responses if response.status_code == 429)
    assert rejected.json()["error"]


def test_bad_field_is_a_400_naming_it(server: Server) -> None:
    response = generate(server, height=63)
    assert response.status_code == 400
    assert response.json()["detail"][0]["loc"] == ["height"]


def test_models_endpoint(server: Server) -> None:
    [info] = httpx.get(f"{server.url}/models", headers=AUTH).json()
    assert info["name"] == "sd-tiny"
    assert info["step_cache"] == "pyramid-attention-broadcast"


def test_step_caching_is_asked_for_and_recorded(server: Server) -> None:
    fields = {"seed": 5, "num_inference_steps": 12}
    cached, plain = generate(server, cache=True, **fields), generate(server, **fields)
    assert cached.status_code == plain.status_code == 200
    parameters = json.loads(Image.open(io.BytesIO(cached.content)).text["parameters"])
    assert parameters["cache"] is True
    assert cached.content != plain.content


def test_bentoml_python_client_gets_an_image(server: Server) -> None:
    with bentoml.SyncHTTPClient(server.url, token=API_KEY) as client:
        image = client.generate_image(prompt="a lighthouse", seed=8, num_inference_steps=2)
        assert isinstance(image, Image.Image)
        assert json.loads(image.text["parameters"])["num_inference_steps"] == 2
        with pytest.raises(bentoml.exceptions.InvalidArgument, match="multiple of 8"):
            client.generate_image(prompt="a lighthouse", width=100)


def test_the_pipeline_is_loaded_once_per_process(server: Server) -> None:
    for seed in range(5):
        assert generate(server, seed=seed).status_code == 200
    assert server.log.read_text().count("loaded pipeline sd-tiny") == 1


def test_generations_take_the_short_way_round_bentoml_s_hop(server: Server) -> None:
    """The generator listens beside BentoML's socket and batches itself, and the public
    process sends there (imagegen/direct_hop.py); BentoML's dispatcher, unused, is not
    taught."""
    assert generate(server).status_code == 200
    log = server.log.read_text()
    assert "generation requests taken on" in log
    assert "generations go to the generator on" in log
    assert "adaptive batching taught" not in log


def test_through_bentoml_s_hop_adaptive_batching_is_taught_before_ready(
    shapes_server: Server,
) -> None:
    """Where the generator is on TCP, generations go through BentoML's client and adaptive
    batching, whose learning would hold a lone client's 9th to 11th request (tests/
    test_batching_warmup.py; the lone-client table of bench.serving)."""
    log = shapes_server.log.read_text()
    assert "adaptive batching taught its timings for sd-shapes" in log
    assert "generation requests taken on" not in log


def raw_request(
    server: Server, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """Send ``target`` exactly as written: HTTP clients would normalise dot-segments."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        body = json.dumps({"prompt": "a lighthouse", "seed": 1}) if method == "POST" else None
        sent = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, target, body=body, headers=sent)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("content-type") or ""
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/generate/image"),
        ("POST", "/generate/image/"),
        ("POST", "//generate/image"),
        ("POST", "/generate//image"),
        ("POST", "/GENERATE/IMAGE"),
        ("POST", "/docs/../generate/image"),
        ("POST", "/docs/%2e%2e/generate/image"),
        ("POST", "/readyz/../generate/image"),
        ("POST", "/static_content/../generate/image"),
        ("POST", "/static_content/%2e%2e/generate/image"),
        ("POST", "/generate%2Fimage"),
        ("POST", "/generate/%69mage"),
        ("POST", "/docs.json/../generate/image"),
        ("POST", "/generate/image?path=/docs"),
        ("POST", "/generate/image#/docs"),
        ("POST", "/./generate/image"),
        ("POST", "http://127.0.0.1/generate/image"),
        ("GET", "/generate/image"),
        ("HEAD", "/generate/image"),
        ("PUT", "/generate/image"),
        ("OPTIONS", "/generate/image"),
        ("GET", "/models"),
        ("GET", "/docs/../models"),
    ],
)
def test_no_trick_reaches_a_generation_or_model_list_without_a_key(
    server: Server, method: str, target: str
) -> None:
    status, _ = raw_request(server, method, target)
    assert status in (401, 404, 405)


def test_method_override_headers_do_not_open_public_paths(server: Server) -> None:
    override = {"X-HTTP-Method-Override": "GET", "X-Original-URL": "/docs"}
    assert raw_request(server, "POST", "/generate/image", override)[0] == 401


def test_the_right_key_opens_the_same_raw_request(server: Server) -> None:
    status, content_type = raw_request(server, "POST", "/generate/image", AUTH)
    assert (status, content_type) == (200, "image/png")


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/healthz", "/docs", "/docs.json"])
def test_public_paths_need_no_key(server: Server, path: str) -> None:
    assert httpx.get(f"{server.url}{path}").status_code == 200


def test_metrics_expose_the_generation_histograms_by_model(server: Server) -> None:
    assert generate(server, seed=3).status_code == 200
    metrics = httpx.get(f"{server.url}/metrics", headers=METRICS_AUTH).text
    assert 'imagegen_generation_seconds_count{model="sd-tiny:' in metrics
    assert 'imagegen_batch_size_count{model="sd-tiny:' in metrics
    assert 'imagegen_http_requests_total{method="POST",route="/generate/image",status="200"}' in (
        metrics
    )


def test_a_chunked_body_over_the_limit_is_a_413(server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        chunk = 64 * 1024
        for _ in range(MAX_BODY // chunk + 1):  # past the default limit
            yield b"x" * chunk
        yield b'"}'

    response = httpx.post(
        f"{server.url}/generate/image",
        content=chunks(),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413
    assert "content-length" not in response.request.headers  # it went chunked


def access_lines(server: Server) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in server.log.read_text().splitlines() if line[:1] == "{")
    return [line for line in lines if line.get("logger") == "imagegen.access"]


def test_each_request_logs_one_json_line_without_key_or_prompt(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/generate/image",
        json={"prompt": "a very private prompt", "seed": 77},
        headers={**AUTH, "X-Request-ID": "e2e-log-check"},
        timeout=60,
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 10
    while not (mine := [x for x in access_lines(server) if x["request_id"] == "e2e-log-check"]):
        assert time.monotonic() < deadline, "no access line for the request"
        time.sleep(0.2)
    [line] = mine
    assert (line["status"], line["seed"], line["path"]) == (200, 77, "/generate/image")
    assert line["api_key_id"] and line["model"].startswith("sd-tiny:")
    log = server.log.read_text()
    assert API_KEY not in log
    assert "a very private prompt" not in log


def test_without_keys_auth_is_off_and_says_so(open_server: Server) -> None:
    assert "auth is off" in open_server.log.read_text()
    assert httpx.get(f"{open_server.url}/livez").status_code == 200


def test_over_the_rate_limit_is_a_429_with_retry_after(open_server: Server) -> None:
    url = f"{open_server.url}/models"
    statuses = [httpx.get(url).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = httpx.get(url)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60  # when the window resets
    # Probes are never limited.
    assert httpx.get(f"{open_server.url}/readyz").status_code == 200


def test_readyz_answers_promptly_while_the_model_loads_and_shutdown_is_clean(
    tmp_path: Path,
) -> None:
    """Left to BentoML's own probe of the generator service, a /readyz sent while the model
    loads was held open until the traffic timeout, and the server's shutdown waited for it."""
    log = tmp_path / "bentoml-serve.log"
    with bentoml_serve(log, ready_path="/livez", api_keys="") as server:
        deadline = time.monotonic() + 120
        answers = [httpx.get(f"{server.url}/readyz", timeout=5)]
        while answers[-1].status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.2)
            answers.append(httpx.get(f"{server.url}/readyz", timeout=5))
    assert {answer.status_code for answer in answers} <= {503, 200}
    for not_ready in (answer for answer in answers if answer.status_code == 503):
        assert not_ready.json()["request_id"] == not_ready.headers["x-request-id"]
        assert int(not_ready.headers["retry-after"]) >= 1
    # Stopped by SIGTERM within harness.servers' grace period, not killed after it.
    assert server.process.returncode != -signal.SIGKILL


def test_an_unknown_model_stops_the_server_listing_the_stored_ones(tmp_path: Path) -> None:
    stored = str(ensure_built(SD_TINY).tag)
    output = failed_start(model="sd-missing:v1")
    assert "sd-missing:v1" in output
    assert stored in output
