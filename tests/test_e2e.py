"""Against a real `bentoml serve` process over real HTTP on loopback."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bentoml
import httpx
import pytest
from PIL import Image

from tests.conftest import SERVER_MAX_CONCURRENCY, Server

pytestmark = pytest.mark.e2e


def generate(server: Server, **fields: Any) -> httpx.Response:
    body = {"prompt": "a lighthouse", **fields}
    return httpx.post(f"{server.url}/generate/image", json=body, timeout=120)


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


def test_concurrent_requests_return_the_images_of_sequential_ones(server: Server) -> None:
    seeds = [1, 2, 3, 4]
    sequential = [generate(server, seed=seed).content for seed in seeds]
    with ThreadPoolExecutor(max_workers=len(seeds)) as pool:
        concurrent = list(pool.map(lambda seed: generate(server, seed=seed), seeds))
    assert [response.status_code for response in concurrent] == [200] * len(seeds)
    assert [response.content for response in concurrent] == sequential
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
    [info] = httpx.get(f"{server.url}/models").json()
    assert info["name"] == "sd-tiny"


def test_bentoml_python_client_gets_an_image(server: Server) -> None:
    with bentoml.SyncHTTPClient(server.url) as client:
        image = client.generate_image(prompt="a lighthouse", seed=8, num_inference_steps=2)
        assert isinstance(image, Image.Image)
        assert json.loads(image.text["parameters"])["num_inference_steps"] == 2
        with pytest.raises(bentoml.exceptions.InvalidArgument, match="multiple of 8"):
            client.generate_image(prompt="a lighthouse", width=100)


def test_the_pipeline_is_loaded_once_per_process(server: Server) -> None:
    for seed in range(5):
        assert generate(server, seed=seed).status_code == 200
    assert server.log.read_text().count("loaded pipeline sd-tiny") == 1
