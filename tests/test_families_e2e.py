"""Several models and families behind one real `bentoml serve`, over HTTP: sd-tiny (with two
LoRA adapters), sdxl-tiny, sd3-tiny, flux-tiny and sd-shapes. Each family serves every mode;
each model has its own queue, so a long generation on one never holds up another; adapters
apply per request and never leak into requests without them.

Batching is off on this server (`IMAGEGEN_MAX_BATCH_SIZE=1`) so that concurrent images can be
compared byte for byte with their solo twins; batching across requests is tested elsewhere."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser

from harness.servers import REPO, Server, bentoml_serve
from imagegen.inputs import pack
from models.adapters import ensure_adapter
from models.controlnets import stored_controlnets
from models.recipes import SD_TINY_STYLE, SD_TINY_TINT
from models.upscalers import stored_upscalers
from tests.conftest import API_KEY, AUTH, OTHER_KEY, requests_outside
from tests.test_edits import INSIDE, MASK, PICTURE
from tests.test_jobs_e2e import client_command, job_when, stepped
from tests.test_playground_browser import shown_image

pytestmark = pytest.mark.e2e

MODELS = ["sd-tiny", "sdxl-tiny", "sd3-tiny", "flux-tiny", "sd-shapes"]
FAMILIES = {"sd-tiny": "sd", "sdxl-tiny": "sdxl", "sd3-tiny": "sd3", "flux-tiny": "flux"}
STYLE = {"name": "sd-tiny-style"}
TINT = {"name": "sd-tiny-tint"}


@pytest.fixture(scope="module")
def models_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Adapters are found in the store when the service starts.
    ensure_adapter(SD_TINY_STYLE), ensure_adapter(SD_TINY_TINT)
    log = tmp_path_factory.mktemp("models-server") / "bentoml-serve.log"
    with bentoml_serve(log, models=",".join(MODELS), max_batch_size="1") as running:
        yield running


def post(server: Server, path: str = "/generate/image", **fields: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}{path}",
        json={"prompt": "a red circle", "seed": 7, **fields},
        headers=AUTH,
        timeout=120,
    )


def image(server: Server, **fields: Any) -> httpx.Response:
    response = post(server, **fields)
    assert response.status_code == 200, response.text
    return response


def pixels(response: httpx.Response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=int)


def test_models_lists_every_loaded_model_the_default_first(models_server: Server) -> None:
    listed = httpx.get(f"{models_server.url}/models", headers=AUTH).json()
    assert [model["name"] for model in listed] == MODELS
    assert {m["name"]: m["family"] for m in listed} == {**FAMILIES, "sd-shapes": "sd"}
    assert all(model["weights_bytes"] > 0 for model in listed)
    loras = {model["name"]: [lora["name"] for lora in model["loras"]] for model in listed}
    assert loras == {**{name: [] for name in MODELS}, "sd-tiny": ["sd-tiny-style", "sd-tiny-tint"]}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_serves_every_mode_over_http(models_server: Server, name: str) -> None:
    made = image(models_server, model=name)
    assert made.headers["X-Model"].startswith(f"{name}:")
    recorded = json.loads(Image.open(io.BytesIO(made.content)).text["parameters"])  # type: ignore[attr-defined]
    assert recorded["model"] == made.headers["X-Model"]
    assert image(models_server, model=name).content == made.content  # deterministic
    edited = image(models_server, model=name, image=pack(PICTURE), strength=0.6)
    assert pixels(edited).shape == (64, 64, 3)
    inpainted = pixels(image(models_server, model=name, image=pack(PICTURE), mask=pack(MASK)))
    assert np.array_equal(inpainted[~INSIDE], np.asarray(PICTURE, dtype=int)[~INSIDE])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_s_tiny_controlnet_guides_it_over_http(
    models_server: Server, name: str
) -> None:
    [info] = [
        m
        for m in httpx.get(f"{models_server.url}/models", headers=AUTH).json()
        if m["name"] == name
    ]
    assert [net["name"] for net in info["controlnets"]] == [f"{name}-control"]
    control = [{"name": f"{name}-control", "image": pack(PICTURE), "module": "canny"}]
    guided = pixels(image(models_server, model=name, controlnets=control))
    assert np.abs(guided - pixels(image(models_server, model=name))).mean() > 1


def test_a_blank_model_is_the_first_listed(models_server: Server) -> None:
    assert image(models_server).headers["X-Model"].startswith("sd-tiny:")


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"model": "sdxl-base"}, "model", ["sd-tiny:", "flux-tiny:", "sd-shapes:"]),
        ({"model": "flux-tiny", "negative_prompt": "blur"}, "negative_prompt", ["FLUX.1"]),
        ({"model": "flux-tiny", "guidance_scale": 3.5}, "guidance_scale", ["FLUX.1"]),
        ({"model": "sd3-tiny", "scheduler": "euler"}, "scheduler", ["Stable Diffusion 3"]),
        ({"model": "sdxl-tiny", "loras": [STYLE]}, "loras", ["sdxl-tiny"]),
        ({"loras": [{"name": "nope"}]}, "loras", ["sd-tiny-style"]),
    ],
)
def test_what_a_model_cannot_honour_is_a_400_naming_the_field(
    models_server: Server, fields: dict[str, Any], field: str, words: list[str]
) -> None:
    response = post(models_server, **fields)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["detail"][0]["loc"] == [field] and body["request_id"]
    assert all(word in body["error"] for word in words), body["error"]


def test_concurrent_requests_to_several_models_each_get_their_own_image(
    models_server: Server,
) -> None:
    asks = [{"model": name, "seed": seed} for name in FAMILIES for seed in (1, 2)]
    alone = [image(models_server, **ask).content for ask in asks]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda ask: image(models_server, **ask).content, asks * 2))
    assert together == alone * 2


def test_a_long_generation_on_one_model_does_not_hold_up_another(models_server: Server) -> None:
    """sd-shapes at 256x256 for 100 steps takes tens of seconds here; sd-tiny's requests are
    answered while it runs, from their own queue and pipeline thread."""
    slow = post(models_server, "/jobs", model="sd-shapes", width=256, height=256,
                num_inference_steps=100)  # fmt: skip
    assert slow.status_code == 202, slow.text
    job_id = slow.json()["id"]
    job_when(models_server, job_id, stepped(2))
    try:
        for seed in range(3):
            image(models_server, model="sd-tiny", seed=seed)
        # Behind the job, sd-tiny's requests would have waited for all 100 of its steps.
        still = httpx.get(f"{models_server.url}/jobs/{job_id}", headers=AUTH).json()
        assert still["status"] == "running" and still["progress"]["step"] < 100
    finally:
        cancelled = httpx.delete(f"{models_server.url}/jobs/{job_id}", headers=AUTH)
    assert cancelled.json()["status"] == "cancelled"  # cancel works per model too


def test_a_job_on_another_model_streams_its_progress(models_server: Server) -> None:
    accepted = post(models_server, "/jobs", model="sd3-tiny", num_inference_steps=6)
    assert accepted.status_code == 202, accepted.text
    job = job_when(models_server, accepted.json()["id"], lambda j: j["status"] == "succeeded")
    assert job["progress"] == {"step": 6, "steps": 6, "current_pass": 1, "fraction": 1.0}
    assert job["parameters"]["model"].startswith("sd3-tiny:")
    assert job["parameters"]["scheduler"] == "flow_match_euler"


def test_loras_apply_scale_combine_and_go_away(models_server: Server) -> None:
    plain = pixels(image(models_server))
    styled = pixels(image(models_server, loras=[STYLE]))
    half = pixels(image(models_server, loras=[{**STYLE, "scale": 0.5}]))
    both = pixels(image(models_server, loras=[STYLE, TINT]))
    assert np.abs(styled - plain).mean() > np.abs(half - plain).mean() > 0
    assert not np.array_equal(both, styled)
    assert np.array_equal(pixels(image(models_server)), plain)  # removed: as before
    recorded = json.loads(
        Image.open(io.BytesIO(image(models_server, loras=[TINT]).content)).text["parameters"]  # type: ignore[attr-defined]
    )
    assert [lora["name"].split(":")[0] for lora in recorded["loras"]] == ["sd-tiny-tint"]


def test_no_adapter_leaks_into_concurrent_requests_without_one(models_server: Server) -> None:
    asks = [
        {"seed": seed, "loras": loras}
        for seed in (11, 12)
        for loras in ([], [STYLE], [{**TINT, "scale": -1.5}], [STYLE, TINT])
    ]
    alone = [image(models_server, **ask).content for ask in asks]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda ask: image(models_server, **ask).content, asks * 3))
    assert together == alone * 3


def test_bentoml_build_packs_the_listed_models_their_adapters_upscalers_and_controlnets() -> None:
    ensure_adapter(SD_TINY_STYLE), ensure_adapter(SD_TINY_TINT)
    env = {**os.environ, "IMAGEGEN_MODELS": "sdxl-tiny,sd-tiny"}
    built = subprocess.run(
        ["bentoml", "build", "--output", "tag"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    tag = built.stdout.split("__tag__:")[-1].strip()
    shown = subprocess.run(
        ["bentoml", "get", tag, "-o", "json"], capture_output=True, text=True, check=True
    )
    services = {s["name"]: s["models"] for s in json.loads(shown.stdout)["services"]}
    packed = sorted(model["tag"].split(":")[0] for model in services["imagegen-generator"])
    upscalers = [model.tag.name for model in stored_upscalers()]  # the session's, conftest's
    assert {"esrgan-tiny-x4", "esrgan-tiny-x2"} <= set(upscalers)
    # Of the session's ControlNets (conftest's), those that fit the two models: not
    # sd-shapes' (another UNet of their family), nor SD3's or FLUX's.
    assert {"sd-shapes-control", "flux-tiny-control"} <= {
        model.tag.name for model in stored_controlnets({"sd", "flux"})
    }
    controls = ["sd-tiny-control", "sdxl-tiny-control"]
    listed = ["sd-tiny", "sd-tiny-style", "sd-tiny-tint", "sdxl-tiny", *upscalers, *controls]
    assert packed == sorted(listed)
    # And every module the service imports, subpackages included.
    name, version = tag.split(":")
    source = Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version / "src"
    modules = [
        path.relative_to(REPO)
        for package in ("imagegen", "models", "middleware", "app")
        for path in (REPO / package).rglob("*.py")
    ]
    missing = [m for m in [Path("service.py"), *modules] if not (source / m).exists()]
    assert len(modules) > 40 and missing == []


@pytest.mark.browser
def test_the_playground_follows_each_model_s_family_and_applies_its_adapters(
    browser: Browser, models_server: Server, artifacts: Path
) -> None:
    """FLUX.1 has no negative prompt and flux-tiny takes no guidance: those fields are off;
    sd-tiny lists its adapters, and the image made with one at half scale is the API's."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    outside = requests_outside(page, models_server.url)
    page.goto(f"{models_server.url}/", wait_until="networkidle")
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#api_key", API_KEY)
    page.press("#api_key", "Tab")
    page.wait_for_selector("#model option[value=flux-tiny]", state="attached")
    page.select_option("#model", "flux-tiny")
    assert page.is_disabled("#negative_prompt") and page.is_disabled("#guidance_scale")
    assert page.is_hidden("#adapters")
    page.select_option("#model", "sd-tiny")
    assert page.is_enabled("#negative_prompt") and page.is_enabled("#guidance_scale")
    page.click("#adapters summary")
    page.check("#lora-sd-tiny-style")
    page.fill("#lora-scale-sd-tiny-style", "0.5")
    page.fill("#prompt", "a red circle")
    page.uncheck("#random_seed")
    page.fill("#seed", "7")
    page.click("#generate")
    page.wait_for_selector("#results img", timeout=60_000)
    page.screenshot(path=str(artifacts / "playground-lora.png"), full_page=True)
    expected = pixels(image(models_server, loras=[{**STYLE, "scale": 0.5}]))
    assert np.array_equal(np.asarray(shown_image(page, "#results img"), dtype=int), expected)
    assert outside == []
    context.close()


def test_the_command_line_client_names_the_model_and_its_adapters(
    models_server: Server, tmp_path: Path
) -> None:
    output = tmp_path / "circle.png"
    args = ["a red circle", "-o", str(output), "--seed", "7", "--model", "sd-tiny"]
    done = subprocess.run(
        client_command(models_server, *args, "--lora", "sd-tiny-style=0.5", "--lora",
                       "sd-tiny-tint", "--key", API_KEY),
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = image(models_server, model="sd-tiny", loras=[{**STYLE, "scale": 0.5}, TINT])
    assert output.read_bytes() == expected.content


def test_a1111_options_choose_the_calling_key_s_model(models_server: Server) -> None:
    """POST options picks the model of that key's later requests, no other key's."""

    def txt2img(key: str) -> dict[str, Any]:
        response = httpx.post(
            f"{models_server.url}/sdapi/v1/txt2img",
            json={"prompt": "a cat", "steps": 2},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return dict(json.loads(response.json()["info"]))

    chosen = httpx.post(
        f"{models_server.url}/sdapi/v1/options",
        json={"sd_model_checkpoint": "sdxl-tiny"},
        headers=AUTH,
    )
    assert chosen.status_code == 200, chosen.text
    assert txt2img(API_KEY)["sd_model_name"] == "sdxl-tiny"
    assert txt2img(OTHER_KEY)["sd_model_name"] == "sd-tiny"  # still the server's default
