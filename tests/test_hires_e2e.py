"""Hires fix and upscaling over real HTTP against real `bentoml serve` processes: the demo
model's shapes kept at twice the size, every upscaler's size, the checks on names and
inputs, the upscaler loaded once, a cancel in the second pass, A1111's extras."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.servers import Server
from imagegen.upscalers import LATENT_UPSCALERS, PIXEL_UPSCALERS
from models.shapes import caption, measure
from tests.conftest import AUTH, TEST_UPSCALERS
from tests.test_inputs import png
from tests.test_jobs_e2e import cancelled_images, job_when, wait_until_cancelled

pytestmark = pytest.mark.e2e

NETWORKS = [recipe.name for recipe in TEST_UPSCALERS]  # stored by conftest
BOMB = base64.b64encode(png(14000, 14000, 8, 6, None)).decode()  # 196 megapixels claimed


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def generate(server: Server, **fields: Any) -> Image.Image:
    response = httpx.post(f"{server.url}/generate/image", json=fields, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


@pytest.mark.parametrize(
    ("colour", "shape", "background"),
    [("red", "circle", "blue"), ("yellow", "square", "black"), ("white", "triangle", "green")],
)
def test_hires_fix_at_twice_the_size_keeps_the_shape_and_colours(
    shapes_server: Server, colour: str, shape: str, background: str
) -> None:
    prompt = caption(colour, shape, background)
    fixed = generate(shapes_server, prompt=prompt, seed=3, hires={"scale": 2})
    assert fixed.size == (128, 128)
    reading = measure(fixed)
    assert (reading.colour, reading.shape, reading.background) == (colour, shape, background)
    # Redrawn, not resized: far from the first pass enlarged with Lanczos.
    first = generate(shapes_server, prompt=prompt, seed=3)
    resized = first.resize((128, 128), Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(fixed, float) - np.asarray(resized, float)).mean()
    assert difference > 4, difference
    # Both passes in the PNG's parameters.
    hires = json.loads(fixed.text["parameters"])["hires"]
    assert (hires["width"], hires["upscaler"], hires["strength"]) == (128, "Latent", 0.7)


@pytest.mark.parametrize("upscaler", [*PIXEL_UPSCALERS, *LATENT_UPSCALERS, *NETWORKS])
def test_every_upscaler_gives_the_asked_size(server: Server, upscaler: str) -> None:
    image = generate(
        server, prompt="a cat", width=64, height=96, num_inference_steps=2,
        hires={"upscaler": upscaler, "width": 112, "steps": 2},
    )  # fmt: skip
    assert image.size == (112, 168)
    if upscaler not in LATENT_UPSCALERS:
        response = httpx.post(
            f"{server.url}/upscale",
            json={"image": b64(image), "width": 150, "height": 90, "upscaler": upscaler},
            headers=AUTH,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-upscaler"] == upscaler
        assert Image.open(io.BytesIO(response.content)).size == (150, 90)


def test_the_lists_name_what_is_served(server: Server) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        upscalers = {u["name"]: u for u in client.get("/upscalers").json()}
        # The store's networks when the server started: the tests' and any stored before.
        networks = [name for name, u in upscalers.items() if u["kind"] == "model"]
        assert set(NETWORKS) <= set(networks)
        assert upscalers["esrgan-tiny-x4"]["architecture"] == "ESRGAN"
        assert upscalers["esrgan-tiny-x4"]["scale"] == 4
        [info] = client.get("/models").json()
        assert info["upscalers"] == [*PIXEL_UPSCALERS, *LATENT_UPSCALERS, *networks]
        a1111 = client.get("/sdapi/v1/upscalers").json()
        assert [u["name"] for u in a1111] == [*PIXEL_UPSCALERS, *networks]
        latent = client.get("/sdapi/v1/latent-upscale-modes").json()
        assert [m["name"] for m in latent] == list(LATENT_UPSCALERS)


def test_an_unknown_upscaler_is_refused_naming_the_field_and_the_served_ones(
    server: Server,
) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        native = client.post(
            "/generate/image", json={"prompt": "a", "hires": {"upscaler": "4x-UltraSharp"}}
        )
        assert native.status_code == 400
        assert native.json()["detail"][0]["loc"] == ["hires.upscaler"]
        assert "esrgan-tiny-x4" in native.json()["error"]
        a1111 = client.post(
            "/sdapi/v1/txt2img",
            json={"prompt": "a", "enable_hr": True, "hr_upscaler": "4x-UltraSharp"},
        )
        assert a1111.status_code == 422
        assert a1111.json()["detail"][0]["loc"] == ["hr_upscaler"]
        alone = client.post("/upscale", json={"image": b64(Image.new("RGB", (8, 8))),
                                              "upscaler": "Latent"})  # fmt: skip
        assert alone.status_code == 400 and alone.json()["detail"][0]["loc"] == ["upscaler"]
        edit = client.post(
            "/generate/image",
            json={"prompt": "a", "image": b64(Image.new("RGB", (64, 64))), "hires": {}},
        )
        assert edit.status_code == 400 and "text-to-image" in edit.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/upscale", {"image": BOMB}, 400, "image"),
        ("/sdapi/v1/extra-single-image", {"image": BOMB}, 422, "image"),
        ("/sdapi/v1/extra-batch-images", {"imageList": [{"data": BOMB}]}, 422, "image"),
    ],
)
def test_a_bomb_is_refused_before_it_is_decoded(
    server: Server, path: str, body: dict[str, Any], status: int, field: str
) -> None:
    started = time.monotonic()
    response = httpx.post(f"{server.url}{path}", json=body, headers=AUTH, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["detail"][0]["loc"] == [field]
    assert "must have at most" in response.json()["error"]
    assert time.monotonic() - started < 2  # 196 megapixels were never decoded


def test_an_output_past_the_bound_is_refused_naming_its_field(server: Server) -> None:
    image = b64(Image.new("RGB", (1024, 600)))
    response = httpx.post(
        f"{server.url}/upscale", json={"image": image, "scale": 8}, headers=AUTH, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["detail"][0]["loc"] == ["scale"]
    assert "at most 4096 pixels a side" in response.json()["error"]


def test_each_upscaling_network_is_loaded_once(server: Server) -> None:
    """Loaded when the generator starts, then only used: several requests, one load line
    each in the server's log."""
    image = b64(Image.new("RGB", (32, 32), (10, 200, 10)))
    for _ in range(3):
        for name in NETWORKS:
            response = httpx.post(
                f"{server.url}/upscale", json={"image": image, "upscaler": name},
                headers=AUTH, timeout=60,
            )  # fmt: skip
            assert response.status_code == 200, response.text
    log = server.log.read_text()
    for name in NETWORKS:
        assert len(re.findall(rf"upscaler {name}:\S+ \(ESRGAN, x\d\) on cpu", log)) == 1


def test_a_cancel_during_the_second_pass_stops_it_within_a_step(server: Server) -> None:
    before = cancelled_images(server)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        body = {
            "prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 3,
            "scheduler": "euler",
            "hires": {"scale": 4, "steps": 100, "strength": 1.0, "upscaler": "Lanczos"},
        }  # fmt: skip
        job = client.post("/jobs", json=body).json()["id"]
        seen = job_when(
            server, job, lambda j: j["progress"]["current_pass"] == 2 and j["progress"]["step"] > 5
        )
        assert seen["progress"]["steps"] == 103  # both passes
        cancelled = client.delete(f"/jobs/{job}")
        assert cancelled.status_code == 200
        wait_until_cancelled(server, before)
        step_at_cancel = cancelled.json()["progress"]["step"]
        # Nothing of it runs on: a small request right after is answered at once.
        started = time.monotonic()
        generate(server, prompt="next", width=64, height=64, num_inference_steps=2)
        assert time.monotonic() - started < 5
    assert step_at_cancel < 103


def test_a1111_hires_fix_and_extras(compat_server: Server) -> None:
    # Its left quarter red: filled and cut to a square, the red falls outside; stretched, not.
    wide = Image.new("RGB", (40, 20), (0, 200, 0))
    wide.paste((220, 0, 0), (0, 0, 10, 20))
    with httpx.Client(base_url=compat_server.url, headers=AUTH, timeout=120) as client:
        made = client.post(
            "/sdapi/v1/txt2img",
            json={
                "prompt": "a cat", "width": 64, "height": 64, "steps": 4, "seed": 5,
                "enable_hr": True, "hr_resize_x": 96, "hr_upscaler": "Latent (bicubic)",
                "hr_second_pass_steps": 6, "denoising_strength": 0.6,
                "hr_sampler_name": "Euler", "hr_prompt": "a dog",
            },
        )  # fmt: skip
        assert made.status_code == 200, made.text
        image = Image.open(io.BytesIO(base64.b64decode(made.json()["images"][0])))
        assert image.size == (96, 96)
        infotext = json.loads(made.json()["info"])["infotexts"][0]
        assert "Hires resize: 96x96, Hires steps: 6, Hires upscaler: Latent (bicubic)" in infotext
        assert "Denoising strength: 0.6" in infotext
        single = client.post(
            "/sdapi/v1/extra-single-image",
            json={"image": b64(image), "upscaling_resize": 2.5, "upscaler_1": "esrgan-tiny-x2"},
        )
        assert single.status_code == 200, single.text
        upscaled = Image.open(io.BytesIO(base64.b64decode(single.json()["image"])))
        assert upscaled.size == (240, 240)
        batch = client.post(
            "/sdapi/v1/extra-batch-images",
            json={
                "imageList": [{"data": b64(image), "name": "a.png"},
                              {"data": b64(wide), "name": "b.png"}],
                "resize_mode": 1, "upscaling_resize_w": 120, "upscaling_resize_h": 120,
                "upscaling_crop": True, "upscaler_1": "Lanczos",
            },
        )  # fmt: skip
        assert batch.status_code == 200, batch.text
        made_images = [Image.open(io.BytesIO(base64.b64decode(d))) for d in batch.json()["images"]]
        assert [i.size for i in made_images] == [(120, 120), (120, 120)]
        red, green, _ = made_images[1].convert("RGB").getpixel((2, 60))
        assert green > 150 and red < 60, (red, green)
        faces = client.post(
            "/sdapi/v1/extra-single-image", json={"image": b64(image), "gfpgan_visibility": 0.5}
        )
        assert faces.status_code == 422
        assert faces.json()["detail"][0]["loc"] == ["gfpgan_visibility"]
