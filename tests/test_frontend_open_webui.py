"""Open WebUI's image generation, replayed from its source over real HTTP, auth on and off.

Source: open-webui/open-webui, `backend/open_webui/routers/images.py` at commit
a8289745da748f8e83447771f9c92df342dbd257 (`verify_url`, `set_image_model`, `get_models`,
`image_generations`), with `requests` as it uses it. The `gpt-image-*` handling (no
`response_format` for models matching `^gpt-image`, edits with `image[]` parts) is from the same
file at 02530d50 (../shared/notes/front-ends.md).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import requests

from tests.conftest import Frontend
from tests.frontend_replay import basic, png, typed_credentials

pytestmark = pytest.mark.e2e

# The admin's settings screen: "Image Size" and "Image Steps" (a user's choice; 64x64 in 4
# steps keeps the replay fast on CPU), CFG scale, sampler and scheduler.
IMAGE_SIZE, IMAGE_STEPS = "64x64", 4
AUTOMATIC1111_CFG_SCALE, AUTOMATIC1111_SAMPLER, AUTOMATIC1111_SCHEDULER = 7.0, "DPM++ 2M", "Karras"


def a1111_auth(frontend: Frontend) -> dict[str, str]:
    """`get_automatic1111_api_auth`: `Basic <b64 of AUTOMATIC1111_API_AUTH>`, or an empty
    header when none is configured."""
    credentials = typed_credentials(frontend)
    return {"authorization": basic(credentials) if credentials else ""}


def test_the_a1111_engine_verifies_lists_switches_model_and_generates(frontend: Frontend) -> None:
    base, headers = frontend.url, a1111_auth(frontend)
    # verify_url: the settings screen's check button.
    requests.get(url=f"{base}/sdapi/v1/options", headers=headers).raise_for_status()
    # get_models: `title` as the id, `model_name` as the label.
    models = requests.get(url=f"{base}/sdapi/v1/sd-models", headers=headers).json()
    listed = [{"id": model["title"], "name": model["model_name"]} for model in models]
    assert listed[0]["name"] == "sd-tiny"
    # set_image_model with the name the admin typed: GET options, change the checkpoint,
    # POST the whole dict back.
    model = "sd-tiny"
    options = requests.get(url=f"{base}/sdapi/v1/options", headers=headers).json()
    assert model != options["sd_model_checkpoint"]  # a title, so the whole dict goes back
    options["sd_model_checkpoint"] = model
    posted = requests.post(url=f"{base}/sdapi/v1/options", json=options, headers=headers)
    assert posted.status_code == 200, posted.text
    # image_generations, engine automatic1111.
    width, height = map(int, IMAGE_SIZE.split("x"))
    data: dict[str, Any] = {
        "prompt": "a red circle",
        "batch_size": 2,
        "width": width,
        "height": height,
    }
    data["steps"] = IMAGE_STEPS
    data["negative_prompt"] = "blurry"
    data["cfg_scale"] = AUTOMATIC1111_CFG_SCALE
    data["sampler_name"] = AUTOMATIC1111_SAMPLER
    data["scheduler"] = AUTOMATIC1111_SCHEDULER
    r = requests.post(url=f"{base}/sdapi/v1/txt2img", json=data, headers=headers)
    assert r.status_code == 200, r.text  # Open WebUI never checks; its user would see nothing
    res = r.json()
    assert [png(image).size for image in res["images"]] == [(64, 64), (64, 64)]
    info = json.loads(res["info"])  # saved beside each image
    assert info["sd_model_name"] == "sd-tiny" and "Karras" not in info["sampler_name"]


def openai_headers(frontend: Frontend) -> dict[str, str]:
    return {"Authorization": f"Bearer {frontend.key}", "Content-Type": "application/json"}


def test_the_openai_engine_generates_with_dall_e_2_as_its_default_model(
    frontend: Frontend,
) -> None:
    data: dict[str, Any] = {
        "model": "dall-e-2",  # IMAGE_GENERATION_MODEL left blank
        "prompt": "a red circle",
        "n": 1,
        "size": IMAGE_SIZE,
        "response_format": "b64_json",
    }
    r = requests.post(
        url=f"{frontend.url}/v1/images/generations", json=data, headers=openai_headers(frontend)
    )
    r.raise_for_status()
    assert [png(image["b64_json"]).size for image in r.json()["data"]] == [(64, 64)]


def test_the_openai_engine_with_gpt_image_omits_response_format_and_reads_b64_json(
    frontend: Frontend,
) -> None:
    data: dict[str, Any] = {"model": "gpt-image-1", "prompt": "a red circle", "size": IMAGE_SIZE}
    r = requests.post(
        url=f"{frontend.url}/v1/images/generations", json=data, headers=openai_headers(frontend)
    )
    r.raise_for_status()
    assert png(r.json()["data"][0]["b64_json"]).size == (64, 64)


def test_the_openai_engine_edits_with_image_array_parts(frontend: Frontend) -> None:
    source = requests.post(
        url=f"{frontend.url}/v1/images/generations",
        json={"model": "gpt-image-1", "prompt": "a red circle", "size": IMAGE_SIZE},
        headers=openai_headers(frontend),
    ).json()["data"][0]["b64_json"]
    r = requests.post(
        url=f"{frontend.url}/v1/images/edits",
        data={"model": "gpt-image-1", "prompt": "a blue circle", "n": "1", "size": IMAGE_SIZE},
        files=[("image[]", ("image.png", base64.b64decode(source), "image/png"))],
        headers={"Authorization": f"Bearer {frontend.key}"},
    )
    assert r.status_code == 200, r.text
    assert png(r.json()["data"][0]["b64_json"]).size == (64, 64)
