"""LibreChat's three image tools, replayed from their source over real HTTP, auth on and off.

Source: danny-avila/LibreChat, `api/app/clients/tools/structured/`:
- `StableDiffusion.js` at 7cacd8a44034967122985bda64e6f81ad201f63e: axios POST of a fixed body
  (1024x1024, 22 steps, `DPM++ 2M Karras`) to `{SD_WEBUI_URL}/sdapi/v1/txt2img`; reads
  `images[0]` and `JSON.parse(info)`. It has no auth setting: credentials go in SD_WEBUI_URL,
  which axios sends as basic auth.
- `OpenAIImageTools.js` at 8731432f64aaaf70633b0a60922ee8182baa630d: the OpenAI SDK's
  `images.generate` with `gpt-image-1` and no `response_format`, reading `b64_json`; edits as a
  form with `image[]` parts.
- `DALLE3.js` at 37d31ec25f2aac6a4e9a4eb3fc05e3c824250861: `images.generate` with `dall-e-3`
  and no `response_format`; it downloads `data[0].url` with a plain GET (no key) and takes
  the file's extension from the URL path's basename (`api/server/services/Files/images/
  parse.js` at a90db8239482adf146fe1151d8edfaf859e7a3b4: `/\\.(jpg|jpeg|png|gif|bmp|tiff|svg)$/`).
The OpenAI SDK for Node sends its `x-stainless-*` headers and `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import base64
import json
import posixpath
import re

import httpx
import pytest

from tests.conftest import Frontend
from tests.frontend_replay import png

pytestmark = pytest.mark.e2e

AXIOS = {"Accept": "application/json, text/plain, */*", "User-Agent": "axios/1.7.7"}
OPENAI_NODE = {
    "Accept": "application/json",
    "User-Agent": "OpenAI/JS 4.77.0",
    "X-Stainless-Lang": "js",
    "X-Stainless-Package-Version": "4.77.0",
    "X-Stainless-Runtime": "node",
    "X-Stainless-Retry-Count": "0",
}
IMAGE_EXTENSION = re.compile(r"\.(jpg|jpeg|png|gif|bmp|tiff|svg)$", re.IGNORECASE)


def openai(frontend: Frontend) -> httpx.Client:
    # The SDK refuses to start without a key: with auth off, users type any word.
    headers = {**OPENAI_NODE, "Authorization": f"Bearer {frontend.key or 'unused'}"}
    return httpx.Client(base_url=f"{frontend.url}/v1", headers=headers, timeout=300)


@pytest.mark.slow
def test_the_stable_diffusion_tool_draws_at_its_fixed_1024_and_reads_info(
    frontend: Frontend,
) -> None:
    payload = {
        "prompt": "a red circle",
        "negative_prompt": "blurry",
        "sampler_index": "DPM++ 2M Karras",
        "cfg_scale": 4.5,
        "steps": 22,
        "width": 1024,
        "height": 1024,
    }
    url = f"{frontend.url_with_credentials()}/sdapi/v1/txt2img"
    response = httpx.post(url, json=payload, headers=AXIOS, timeout=300)
    assert response.status_code == 200, response.text
    image = response.json()["images"][0]
    assert png(image.split(",", 1)[0]).size == (1024, 1024)
    info = json.loads(response.json()["info"])
    assert (info["width"], info["height"]) == (1024, 1024) and info["seed"] >= 0
    assert info["infotexts"][0].startswith("a red circle\nNegative prompt: blurry\nSteps: 22")


def test_the_openai_image_tool_generates_with_gpt_image_1_and_edits_with_image_parts(
    frontend: Frontend,
) -> None:
    with openai(frontend) as client:
        made = client.post(
            "/images/generations",
            json={
                "model": "gpt-image-1", "prompt": "a red circle", "n": 1, "background": "auto",
                "output_format": "png", "quality": "auto", "size": "auto",
            },
        )  # fmt: skip
        assert made.status_code == 200, made.text
        first = made.json()["data"][0]["b64_json"]
        assert png(first).size == (64, 64)  # `auto`: the model's native size
        edited = client.post(
            "/images/edits",
            data={"model": "gpt-image-1", "prompt": "a blue circle", "quality": "auto",
                  "size": "auto"},
            files=[("image[]", ("image.png", base64.b64decode(first), "image/png"))],
        )  # fmt: skip
        assert edited.status_code == 200, edited.text
        assert png(edited.json()["data"][0]["b64_json"]).size == (64, 64)


def test_the_dall_e_3_tool_downloads_the_url_without_a_key_and_names_it_png(
    frontend: Frontend,
) -> None:
    with openai(frontend) as client:
        made = client.post(
            "/images/generations",
            json={"model": "dall-e-3", "quality": "standard", "style": "vivid",
                  "size": "1024x1024", "prompt": "a red circle", "n": 1},
        )  # fmt: skip
    assert made.status_code == 200, made.text
    the_image_url = made.json()["data"][0]["url"]
    basename = posixpath.basename(httpx.URL(the_image_url).path)
    assert IMAGE_EXTENSION.search(basename) and basename.endswith(".png")
    downloaded = httpx.get(the_image_url, headers=AXIOS)  # processFileURL: a plain GET
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"] == "image/png"
    assert png(base64.b64encode(downloaded.content).decode()).size == (1024, 1024)
