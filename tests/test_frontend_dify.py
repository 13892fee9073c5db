"""Dify's Stable Diffusion tool, replayed from its source over real HTTP, auth on and off.

Source: langgenius/dify, `api/core/tools/provider/builtin/stablediffusion/tools/
stable_diffusion.py` at commit 04bcf81d0aec021198ca50aa7466c2106f8343e0 (`validate_models`,
`_invoke`, `text2img` with `DRAW_TEXT_OPTIONS`, `img2img`). It posts with httpx's
`post(url, data=json.dumps(...))`: a JSON body with **no Content-Type**. It has no auth field;
credentials go in `base_url` (`http://user:key@host`), which httpx sends as basic auth. Width,
height and steps are the tool's parameters (64, 64 and 4 here).
"""

from __future__ import annotations

import base64
import io
import json
from copy import deepcopy

import pytest
from httpx import get, post
from PIL import Image
from yarl import URL

from tests.conftest import Frontend
from tests.frontend_replay import png

pytestmark = pytest.mark.e2e

DRAW_TEXT_OPTIONS = {
    "prompt": "", "negative_prompt": "", "seed": -1, "subseed": -1, "subseed_strength": 0,
    "seed_resize_from_h": -1, "sampler_index": "DPM++ SDE Karras", "seed_resize_from_w": -1,
    "batch_size": 1, "n_iter": 1, "steps": 10, "cfg_scale": 7, "width": 1024, "height": 1024,
    "restore_faces": False, "do_not_save_samples": False, "do_not_save_grid": False, "eta": 0,
    "denoising_strength": 0, "s_min_uncond": 0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0,
    "s_noise": 0, "override_settings": {}, "override_settings_restore_afterwards": True,
    "refiner_switch_at": 0, "disable_extra_networks": False, "comments": {},
    "enable_hr": False, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2,
    "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_prompt": "",
    "hr_negative_prompt": "", "script_args": [], "send_images": True, "save_images": False,
    "alwayson_scripts": {},
}  # fmt: skip
WIDTH = HEIGHT = 64
STEPS = 4


def test_validate_set_model_text_to_image_and_image_to_image(frontend: Frontend) -> None:
    base_url = frontend.url_with_credentials()
    # validate_models: the model the user chose must be among `[].model_name`.
    response = get(url=str(URL(base_url) / "sdapi" / "v1" / "sd-models"), timeout=10)
    assert response.status_code == 200
    models = [d["model_name"] for d in response.json()]
    model = models[0]
    # _invoke: set the model; anything but 200 fails the tool.
    url = str(URL(base_url) / "sdapi" / "v1" / "options")
    response = post(url, data=json.dumps({"sd_model_checkpoint": model}))  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    # text2img
    draw_options = deepcopy(DRAW_TEXT_OPTIONS)
    draw_options["prompt"] = "a red circle"
    draw_options["width"], draw_options["height"], draw_options["steps"] = WIDTH, HEIGHT, STEPS
    draw_options["negative_prompt"] = ""
    draw_options["override_settings"]["sd_model_checkpoint"] = model  # type: ignore[index]
    url = str(URL(base_url) / "sdapi" / "v1" / "txt2img")
    response = post(url, data=json.dumps(draw_options), timeout=120)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    image = response.json()["images"][0]
    assert png(image).size == (WIDTH, HEIGHT)
    # img2img from that image, converted to RGB PNG as the tool does.
    buffer = io.BytesIO()
    Image.open(io.BytesIO(base64.b64decode(image))).convert("RGB").save(buffer, format="PNG")
    img2img_options = {
        "init_images": [base64.b64encode(buffer.getvalue()).decode("utf-8")],
        "prompt": "a blue circle", "negative_prompt": "", "denoising_strength": 0.9,
        "width": WIDTH, "height": HEIGHT, "cfg_scale": 7, "sampler_name": "Euler a",
        "restore_faces": False, "steps": STEPS, "script_args": ["outpainting mk2"],
        "override_settings": {"sd_model_checkpoint": model},
    }  # fmt: skip
    url = str(URL(base_url) / "sdapi" / "v1" / "img2img")
    response = post(url, data=json.dumps(img2img_options), timeout=120)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert png(response.json()["images"][0]).size == (WIDTH, HEIGHT)
