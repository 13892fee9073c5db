"""text-generation-webui's `sd_api_pictures` extension, replayed from its source over real
HTTP, auth on and off.

Source: oobabooga/text-generation-webui, `extensions/sd_api_pictures/script.py` at commit
1dcde41d03d13fc768316f4d2256a8a6dd044268 (`SD_api_address_update`, `get_checkpoints`,
`load_checkpoint`, `get_samplers`, `give_VRAM_priority`, `get_SD_pictures` with its default
`params`: 512x512, 32 steps, `DPM++ 2M`, `hr_scale` the string '1.0', `hr_upscaler`
'ESRGAN_4x'). It uses `requests` with no auth of its own: credentials go in the address
(`http://user:key@host`), which requests sends as basic auth.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.conftest import Frontend
from tests.frontend_replay import png

pytestmark = pytest.mark.e2e

PARAMS: dict[str, Any] = {
    "prompt_prefix": "(Masterpiece:1.1), detailed, intricate, colorful",
    "negative_prompt": "(worst quality, low quality:1.3)",
    "width": 512, "height": 512, "denoising_strength": 0.61, "restore_faces": False,
    "enable_hr": False, "hr_upscaler": "ESRGAN_4x", "hr_scale": "1.0", "seed": -1,
    "sampler_name": "DPM++ 2M", "steps": 32, "cfg_scale": 7,
}  # fmt: skip


def sd_pictures_payload(params: dict[str, Any]) -> dict[str, Any]:
    """`get_SD_pictures`' txt2img body from the extension's `params`."""
    description = "(a red circle:1)"
    return {
        "prompt": params["prompt_prefix"] + description,
        "seed": params["seed"],
        "sampler_name": params["sampler_name"],
        "enable_hr": params["enable_hr"],
        "hr_scale": params["hr_scale"],
        "hr_upscaler": params["hr_upscaler"],
        "denoising_strength": params["denoising_strength"],
        "steps": params["steps"],
        "cfg_scale": params["cfg_scale"],
        "width": params["width"],
        "height": params["height"],
        "restore_faces": params["restore_faces"],
        "override_settings_restore_afterwards": True,
        "negative_prompt": params["negative_prompt"],
    }


def test_connect_choose_checkpoint_manage_vram_and_draw(frontend: Frontend) -> None:
    address = frontend.url_with_credentials()
    # SD_api_address_update
    requests.get(url=f"{address}/sdapi/v1/sd-models").raise_for_status()
    # get_checkpoints, load_checkpoint, get_samplers
    models = requests.get(url=f"{address}/sdapi/v1/sd-models")
    options = requests.get(url=f"{address}/sdapi/v1/options").json()
    checkpoint_list = [result["title"] for result in models.json()]
    assert options["sd_model_checkpoint"] in checkpoint_list
    loaded = requests.post(
        url=f"{address}/sdapi/v1/options", json={"sd_model_checkpoint": checkpoint_list[0]}
    )
    assert loaded.status_code == 200, loaded.text
    response = requests.get(url=f"{address}/sdapi/v1/samplers")
    response.raise_for_status()
    assert PARAMS["sampler_name"] in [x["name"] for x in response.json()]
    # give_VRAM_priority('set'), then ('SD') before drawing: JSON bodies of "".
    requests.post(url=f"{address}/sdapi/v1/unload-checkpoint", json="").raise_for_status()
    requests.post(url=f"{address}/sdapi/v1/reload-checkpoint", json="").raise_for_status()
    # get_SD_pictures
    payload = sd_pictures_payload(PARAMS)
    response = requests.post(url=f"{address}/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    r = response.json()
    assert [png(img_str.split(",", 1)[0]).size for img_str in r["images"]] == [(512, 512)]
    # give_VRAM_priority('LLM'): the server is asked to vacate VRAM again.
    requests.post(url=f"{address}/sdapi/v1/unload-checkpoint", json="").raise_for_status()


def test_hires_fix_with_its_string_scale_and_a_typed_upscaler(frontend: Frontend) -> None:
    """Its "Hires. fix" checkbox on, the slider untouched (so `hr_scale` is still the string
    '1.0': a second pass at the same size) and the upscaler a free text box: its default
    'ESRGAN_4x' is not served here, and the answer names the field; a served name draws."""
    address = frontend.url_with_credentials()
    params = {**PARAMS, "enable_hr": True, "width": 128, "height": 128, "steps": 8}
    refused = requests.post(url=f"{address}/sdapi/v1/txt2img", json=sd_pictures_payload(params))
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["hr_upscaler"]
    served = {**params, "hr_upscaler": "Lanczos", "hr_scale": "1.5"}
    response = requests.post(url=f"{address}/sdapi/v1/txt2img", json=sd_pictures_payload(served))
    assert response.status_code == 200, response.text
    assert [png(image).size for image in response.json()["images"]] == [(192, 192)]
    same = requests.post(url=f"{address}/sdapi/v1/txt2img", json=sd_pictures_payload(
        {**params, "hr_upscaler": "Lanczos"}
    ))  # fmt: skip
    assert same.status_code == 200, same.text
    assert [png(image).size for image in same.json()["images"]] == [(128, 128)]
