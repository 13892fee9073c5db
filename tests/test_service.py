"""The whole service in-process, through BentoML's own ASGI app (lifespan, routing, errors)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import statistics
import subprocess
import sys
import time
from typing import Any

import bentoml
import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from app.stack import middleware_stack
from imagegen.engine.generation import PipelineRunner
from imagegen.engine.loading import load_model
from imagegen.parameters import resolve
from imagegen.schemas import IMAGE_REQUEST_EXAMPLE, MAX_SEED, ImageRequest
from imagegen.serving import encoding as encoding_module
from imagegen.serving.compat import a1111 as a1111_module
from imagegen.serving.compat import openai as openai_module
from imagegen.settings import Settings, get_settings
from middleware.auth import ApiKeys
from models.recipes import SD_TINY
from models.store import ensure_built
from service import ImageGeneration, api_keys
from tests.conftest import PIPELINE_LOADS, STARTUP_LOADS


def generate(client: TestClient, **fields: Any) -> Any:
    return client.post("/generate/image", json={"prompt": "a red apple", **fields})


def test_ready_after_load_and_warm_up(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200


def test_png_response_carries_seed_model_and_parameters(client: TestClient) -> None:
    response = generate(client, seed=11)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "11"
    assert response.headers["x-model"].startswith("sd-tiny:v1-")
    image = Image.open(io.BytesIO(response.content))
    parameters = json.loads(image.text["parameters"])
    assert parameters["seed"] == 11
    assert parameters["prompt"] == "a red apple"
    assert parameters["model"] == response.headers["x-model"]


def test_blank_seed_is_returned_and_reproduces_the_image(client: TestClient) -> None:
    first = generate(client)
    again = generate(client, seed=int(first.headers["x-seed"]))
    assert again.content == first.content


def test_same_body_and_seed_give_identical_bytes(client: TestClient) -> None:
    assert generate(client, seed=5).content == generate(client, seed=5).content


def test_another_seed_gives_another_image(client: TestClient) -> None:
    assert generate(client, seed=5).content != generate(client, seed=6).content


@pytest.mark.parametrize(
    ("output_format", "content_type"),
    [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")],
)
def test_output_format_sets_content_type(
    client: TestClient, output_format: str, content_type: str
) -> None:
    response = generate(client, seed=1, output_format=output_format, quality=80)
    assert response.headers["content-type"] == content_type
    assert Image.open(io.BytesIO(response.content)).format == output_format.upper()


def test_example_body_generates(client: TestClient) -> None:
    assert client.post("/generate/image", json=IMAGE_REQUEST_EXAMPLE).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "a cat", "width": 100}, "width"),
        ({"prompt": "a cat", "num_inference_steps": 500}, "num_inference_steps"),
        ({"prompt": "a cat", "seed": -1}, "seed"),
        ({"prompt": "a cat", "output_format": "bmp"}, "output_format"),
        ({"prompt": "a cat", "unexpected": 1}, "unexpected"),
        ({"negative_prompt": "no prompt"}, "prompt"),
    ],
)
def test_bad_field_is_a_400_naming_it(client: TestClient, body: dict[str, Any], field: str) -> None:
    response = client.post("/generate/image", json=body)
    assert response.status_code == 400
    assert [error["loc"] for error in response.json()["detail"]] == [[field]]


def test_unknown_scheduler_400_lists_the_valid_names(client: TestClient) -> None:
    response = generate(client, scheduler="k_euler")
    assert response.status_code == 400
    message = response.json()["detail"][0]["msg"]
    assert all(name in message for name in ("ddim", "euler_a", "dpm++", "pndm", "lms"))


def test_unknown_model_400_lists_the_loaded_ones(client: TestClient) -> None:
    response = generate(client, model="sdxl-base")
    assert response.status_code == 400
    body = response.json()
    assert body["detail"][0]["loc"] == ["model"]
    assert bentoml.get_current_service().generator.runners["sd-tiny"].model.tag in body["error"]


def test_malformed_json_is_a_400(client: TestClient) -> None:
    response = client.post(
        "/generate/image", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


def test_pickle_bodies_are_refused(client: TestClient) -> None:
    response = client.post(
        "/generate/image",
        content=b"\x80\x04N.",
        headers={"content-type": "application/vnd.bentoml+pickle"},
    )
    assert response.status_code == 415


def test_models_lists_the_loaded_model_and_its_defaults(client: TestClient) -> None:
    [info] = client.get("/models").json()
    assert info["name"] == "sd-tiny"
    assert (info["native_width"], info["native_height"]) == (64, 64)
    assert info["default_steps"] == 4
    assert {"ddim", "euler", "euler_a", "dpm++", "pndm", "lms"} <= set(info["schedulers"])


def test_out_of_memory_is_a_503_and_the_service_keeps_serving(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = bentoml.get_current_service().generator.runners["sd-tiny"].model.pipeline

    def out_of_memory(*_: Any, **__: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with monkeypatch.context() as patch:
        patch.setattr(type(pipeline), "__call__", out_of_memory)
        response = generate(client, seed=1)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert "Tried to allocate" not in response.text
    assert generate(client, seed=1).status_code == 200


def test_unexpected_failure_is_a_500_without_traceback(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = bentoml.get_current_service().generator.runners["sd-tiny"].model.pipeline

    def broken(*_: Any, **__: Any) -> Any:
        raise ValueError("internal detail /opt/secret/path")

    with monkeypatch.context() as patch:
        patch.setattr(type(pipeline), "__call__", broken)
        response = generate(client, seed=1)
    assert response.status_code == 500
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert response.json()["error"]


def test_docs_page_and_spec_are_served_locally(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "swagger-ui-bundle.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    spec = client.get("/docs.json").json()
    assert {"/generate/image", "/models"} <= set(spec["paths"])


def test_the_playground_page_and_its_files_are_served_without_a_key(client: TestClient) -> None:
    page = client.get("/", headers={"Authorization": ""})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'href="/docs"' in page.text
    for path, kind in [("/web/app.js", "javascript"), ("/web/style.css", "text/css")]:
        asset = client.get(path, headers={"Authorization": ""})
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
    assert client.get("/web/missing.js", headers={"Authorization": ""}).status_code == 404


def test_spec_documents_every_request_field_with_an_example(client: TestClient) -> None:
    spec = client.get("/docs.json").json()
    body = spec["paths"]["/generate/image"]["post"]["requestBody"]["content"]["application/json"]
    schema = body["schema"]
    assert schema["example"] == IMAGE_REQUEST_EXAMPLE
    assert all(field.get("description") for field in schema["properties"].values())


def test_pipeline_is_loaded_once_and_later_requests_cost_one_generation(
    client: TestClient,
) -> None:
    """The point of the service: N requests, one load, and requests 2..N cost about a bare
    generation instead of a load plus a generation."""
    assert len(STARTUP_LOADS) == 1
    loads = len(PIPELINE_LOADS)
    latencies = []
    for seed in range(8):
        started = time.perf_counter()
        assert generate(client, seed=seed).status_code == 200
        latencies.append(time.perf_counter() - started)
    assert len(PIPELINE_LOADS) == loads

    # What every request would cost if the handler reloaded the model (the anti-pattern).
    started = time.perf_counter()
    reloaded = PipelineRunner(load_model(ensure_built(SD_TINY)))
    reloaded.generate(resolve(ImageRequest(prompt="a red apple", seed=0), reloaded.model.info))
    reload_cost = time.perf_counter() - started
    assert statistics.median(latencies[1:]) < reload_cost


def test_middlewares_are_mounted_in_the_documented_order() -> None:
    stack = middleware_stack(Settings(rate_limit="60/minute"), ApiKeys.parse(["k"]))
    assert [middleware.cls.__name__ for middleware in stack] == [  # type: ignore[attr-defined]
        "RequestMetricsMiddleware",
        "AccessLogMiddleware",
        "SecurityHeadersMiddleware",
        "RequestIdMiddleware",
        "ErrorBodyMiddleware",
        "TimingMiddleware",
        "CrossSiteMiddleware",
        "ApiKeyAuthMiddleware",
        "RateLimitMiddleware",
        "AdmissionMiddleware",
        "JsonBodyMiddleware",
        "BodyLimitMiddleware",
    ]


def test_the_service_mounts_that_stack_then_the_direct_route() -> None:
    mounted = [cls.__name__ for cls, _ in ImageGeneration.middlewares]  # type: ignore[attr-defined]
    assert mounted == [
        *(
            middleware.cls.__name__  # type: ignore[attr-defined]
            for middleware in middleware_stack(get_settings(), api_keys)
        ),
        "DirectRoute",
    ]


def test_without_keys_auth_is_off_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        logging.getLogger("imagegen").propagate = True  # let caplog see the project's records
        try:
            stack = middleware_stack(Settings(api_keys=""), ApiKeys.parse([]))
        finally:
            logging.getLogger("imagegen").propagate = False
    mounted = [middleware.cls.__name__ for middleware in stack]  # type: ignore[attr-defined]
    assert "ApiKeyAuthMiddleware" not in mounted
    assert "RateLimitMiddleware" not in mounted
    assert "auth is off" in caplog.text


def max_level_difference(png: bytes, other_png: bytes) -> int:
    a, b = (np.asarray(Image.open(io.BytesIO(data)), dtype=int) for data in (png, other_png))
    return int(np.abs(a - b).max())


def images(client: TestClient, **fields: Any) -> Any:
    return client.post("/generate/images", json={"prompt": "a red apple", **fields})


def test_several_images_come_back_with_consecutive_seeds(client: TestClient) -> None:
    response = images(client, seed=40, num_images=3)
    assert response.status_code == 200
    body = response.json()
    assert [image["seed"] for image in body["images"]] == [40, 41, 42]
    assert body["parameters"]["seed"] == 40
    assert response.headers["x-seed"] == "40"
    assert body["timings"]["inference_ms"] > 0


def test_the_images_of_a_request_run_as_one_batch(client: TestClient) -> None:
    assert images(client, seed=40, num_images=3).headers["x-batch-size"] == "3"


def test_each_image_matches_the_single_request_with_its_seed(client: TestClient) -> None:
    """Batched with its siblings, an image is its lone self within one level of 255 (batching
    off, it is byte-identical: see test_generation)."""
    body = images(client, seed=40, num_images=3).json()
    for image in body["images"]:
        single = generate(client, seed=image["seed"])
        assert max_level_difference(base64.b64decode(image["data"]), single.content) <= 1


def test_each_png_names_its_own_seed(client: TestClient) -> None:
    body = images(client, seed=7, num_images=2).json()
    for image in body["images"]:
        decoded = Image.open(io.BytesIO(base64.b64decode(image["data"])))
        assert json.loads(decoded.text["parameters"])["seed"] == image["seed"]


def test_a_drawn_seed_leaves_room_for_every_image(client: TestClient) -> None:
    seeds = [image["seed"] for image in images(client, num_images=8).json()["images"]]
    assert seeds == list(range(seeds[0], seeds[0] + 8))
    assert seeds[-1] <= MAX_SEED


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"num_images": 0}, "num_images"), ({"num_images": 9}, "num_images")],
)
def test_num_images_out_of_bounds_is_a_400(
    client: TestClient, fields: dict[str, Any], field: str
) -> None:
    response = images(client, **fields)
    assert response.status_code == 400
    assert response.json()["detail"][0]["loc"] == [field]


def test_seeds_past_the_maximum_are_a_400(client: TestClient) -> None:
    response = images(client, seed=MAX_SEED - 1, num_images=3)
    assert response.status_code == 400
    assert "`seed` + `num_images` - 1 must be at most" in response.json()["detail"][0]["msg"]


def test_images_model_errors_are_answered_like_single_ones(client: TestClient) -> None:
    response = images(client, model="sdxl", num_images=2)
    assert response.status_code == 400
    assert response.json()["detail"][0]["loc"] == ["model"]


def test_the_service_module_imports_no_ml_library() -> None:
    """Every `bentoml serve` process imports it; only the generator service's loads torch, so
    the public process stays small and quick to start."""
    libraries = "{'torch', 'diffusers', 'transformers'}"
    probe = f"import sys, service; print(sorted({libraries} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_every_answer_but_the_smallest_is_encoded_off_the_event_loop(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PNG encoding, base64 and the JSON around them grow with the pixels: run on the event
    loop, they would hold every other request (issue 25). Up to INLINE_PIXELS, less than the
    hop to a thread and back, they run on it."""
    on_loop: dict[str, bool] = {}

    def recorded(module: Any, name: str) -> None:
        encode_image = module.encode_image

        def encoding(*args: Any) -> bytes:
            try:
                asyncio.get_running_loop()
                on_loop[name] = True
            except RuntimeError:  # no loop runs in this thread
                on_loop.setdefault(name, False)
            return encode_image(*args)

        monkeypatch.setattr(module, "encode_image", encoding)

    recorded(encoding_module, "native")
    recorded(openai_module, "openai")
    recorded(a1111_module, "a1111")
    assert generate(client, width=64, height=64).status_code == 200
    assert on_loop == {"native": True}
    on_loop.clear()
    assert generate(client, width=96, height=96).status_code == 200
    size = {"width": 96, "height": 96}
    images = {"prompt": "a cat", "num_images": 2, "num_inference_steps": 2, **size}
    assert client.post("/generate/images", json=images).status_code == 200
    job = client.post("/jobs", json=images).json()
    while client.get(f"/jobs/{job['id']}").json()["status"] not in ("succeeded", "failed"):
        time.sleep(0.05)
    assert client.get(f"/jobs/{job['id']}/result").status_code == 200
    openai = {"prompt": "a cat", "size": "96x96"}
    assert client.post("/v1/images/generations", json=openai).status_code == 200
    a1111 = {"prompt": "a cat", "steps": 2, **size}
    assert client.post("/sdapi/v1/txt2img", json=a1111).status_code == 200
    assert on_loop == {"native": False, "openai": False, "a1111": False}


@pytest.mark.parametrize("mapping", ["dall-e-3=sdxl", "dall-e-3", "=sd-tiny"])
def test_openai_model_names_must_map_to_served_models(mapping: str) -> None:
    with pytest.raises(ValueError, match="`openai_models` must map names to served models"):
        Settings(models="sd-tiny", openai_models=mapping)


def test_openai_model_names_map_to_a_served_model_by_name_or_tag() -> None:
    settings = Settings(models="sd-tiny", openai_models="dall-e-3=sd-tiny, gpt-image-1=sd-tiny:v1")
    assert settings.openai_model_map == {"dall-e-3": "sd-tiny", "gpt-image-1": "sd-tiny:v1"}


def test_bentoml_s_tracing_passes_every_request_through_unless_asked_for() -> None:
    """Its OpenTelemetry middleware opened a span per request and per message: about 1 ms a
    request on cpu-2 (docs/benchmarks.md), for an exporter nobody had configured."""
    from opentelemetry.util.http import ExcludeList

    assert ImageGeneration.config["tracing"] == Settings().bentoml_tracing
    excluded = ExcludeList(Settings().bentoml_tracing["excluded_urls"])
    for url in ("http://127.0.0.1:3000/generate/image", "http://host/jobs/x/events?preview=1"):
        assert excluded.url_disabled(url)
    assert Settings(tracing=True).bentoml_tracing == {}  # BentoML's own configuration then
