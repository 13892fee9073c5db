"""AUTOMATIC1111's API (`/sdapi/v1`) against a real `bentoml serve`, driven by the published
`webuiapi` client as its users drive it (basic auth with the key as the password): txt2img,
img2img and inpainting, progress with a preview, interrupt (the calling key's work only),
model listing and choice through options, samplers, LoRAs in the prompt, and 422s naming what
is not supported."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from harness.servers import Server
from tests.conftest import API_KEY, AUTH, OTHER_KEY
from tests.test_edits import INSIDE, MASK, PICTURE
from tests.test_jobs_e2e import job_when, stepped

pytestmark = pytest.mark.e2e

SMALL = {"width": 64, "height": 64, "steps": 4}


def api(server: Server, key: str = API_KEY) -> webuiapi.WebUIApi:
    host, port = server.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), username="me", password=key)


def native_image(server: Server, **fields: Any) -> bytes:
    response = httpx.post(f"{server.url}/generate/image", json=fields, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


def test_txt2img_answers_images_parameters_and_info(compat_server: Server) -> None:
    made = api(compat_server).txt2img(
        prompt="a red circle", negative_prompt="blue", seed=21, cfg_scale=6, sampler_name="Euler",
        batch_size=2, **SMALL,
    )  # fmt: skip
    assert len(made.images) == 2 and made.image.size == (64, 64)
    info = made.info
    assert info["all_seeds"] == [21, 22] and info["seed"] == 21
    assert info["sampler_name"] == "Euler" and info["cfg_scale"] == 6
    assert info["sd_model_name"] == "sd-tiny" and len(info["sd_model_hash"]) == 10
    text = info["infotexts"][1]
    assert text.startswith("a red circle\nNegative prompt: blue\nSteps: 4, Sampler: Euler")
    assert "Seed: 22, Size: 64x64" in text
    assert made.parameters["prompt"] == "a red circle"
    # The same image as the native API's for those parameters.
    raw = made.json["images"][0]
    native = native_image(
        compat_server, prompt="a red circle", negative_prompt="blue", seed=21,
        guidance_scale=6, scheduler="euler", width=64, height=64, num_inference_steps=4,
    )  # fmt: skip
    assert base64.b64decode(raw) == native


def test_seed_minus_one_is_random(compat_server: Server) -> None:
    seeds = [api(compat_server).txt2img(prompt="a cat", **SMALL).info["seed"] for _ in range(2)]
    assert seeds[0] != seeds[1] and all(seed >= 0 for seed in seeds)


def test_img2img_and_inpainting(compat_server: Server) -> None:
    client = api(compat_server)
    moved = client.img2img(images=[PICTURE], prompt="a cat", denoising_strength=0.5, **SMALL)
    assert moved.image.size == (64, 64) and moved.info["denoising_strength"] == 0.5
    inpainted = client.img2img(
        images=[PICTURE], mask_image=MASK, prompt="a cat", denoising_strength=1.0, seed=4, **SMALL
    )
    pixels = np.asarray(inpainted.image.convert("RGB"), dtype=int)
    original = np.asarray(PICTURE, dtype=int)
    assert np.array_equal(pixels[~INSIDE], original[~INSIDE])  # black kept (A1111's default)
    inverted = client.img2img(
        images=[PICTURE], mask_image=MASK, inpainting_mask_invert=1, prompt="a cat",
        denoising_strength=1.0, seed=4, **SMALL,
    )  # fmt: skip
    flipped = np.asarray(inverted.image.convert("RGB"), dtype=int)
    assert np.array_equal(flipped[INSIDE], original[INSIDE])  # now the white part is kept


def test_models_samplers_schedulers_loras_and_options(compat_server: Server) -> None:
    client = api(compat_server)
    titles = client.util_get_model_names()
    assert len(titles) == 1 and titles[0].startswith("sd-tiny [")
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM"} <= set(client.util_get_sampler_names())
    assert {"automatic", "karras", "exponential", "sgm_uniform"} <= set(
        client.util_get_scheduler_names()
    )
    # What the store holds for the model when the server started (other modules add some).
    stored = httpx.get(f"{compat_server.url}/models", headers=AUTH).json()[0]["loras"]
    assert [lora["name"] for lora in client.get_loras()] == [lora["name"] for lora in stored]
    client.util_set_model("sd-tiny")
    assert client.util_get_current_model() == titles[0]


def test_options_choose_a_loaded_model_only(compat_server: Server) -> None:
    refused = api(compat_server).set_options({"sd_model_checkpoint": "sdxl-base [123]"})
    assert "sd_model_checkpoint" in refused["error"]
    refused = api(compat_server).set_options({"eta_noise_seed_delta": 31337})
    assert "eta_noise_seed_delta" in refused["error"]


def post(server: Server, path: str, body: dict[str, Any], key: str = API_KEY) -> httpx.Response:
    return httpx.post(
        f"{server.url}/sdapi/v1/{path}", json=body,
        headers={"Authorization": f"Bearer {key}"}, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"enable_hr": True, "hr_upscaler": "SwinIR_4x"}, "hr_upscaler"),
        ({"enable_hr": True, "hr_scale": 5}, "hr_scale"),
        ({"restore_faces": True}, "restore_faces"),
        ({"styles": ["cinematic"]}, "styles"),
        ({"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "alwayson_scripts"),
        ({"subseed_strength": 0.3}, "subseed_strength"),
        ({"sampler_name": "Restart"}, "sampler_name"),
        ({"sampler_name": "Euler", "scheduler": "KL Optimal"}, "scheduler"),
        ({"sampler_name": "Euler a", "scheduler": "Karras"}, "scheduler"),
        ({"override_settings": {"CLIP_stop_at_last_layers": 13}}, "override_settings"),
        ({"override_settings": {"s_noise": 0.5}}, "override_settings"),
        ({"override_settings": {"sd_vae": "vae-ft-mse-840000.safetensors"}}, "override_settings"),
        ({"override_settings": {"sd_model_checkpoint": "nope"}}, "override_settings"),
        ({"steps": 0}, "steps"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "a cat <lora:nope:0.5>"}, "prompt"),
    ],
)
def test_what_is_not_supported_is_a_422_naming_the_field(
    compat_server: Server, fields: dict[str, Any], field: str
) -> None:
    response = post(compat_server, "txt2img", {"prompt": "a cat", **SMALL, **fields})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0].startswith(field)


def test_the_defaults_a1111_clients_send_are_accepted(compat_server: Server) -> None:
    """Off values, unknown fields and sampler settings A1111 would apply quietly."""
    body = {
        "prompt": "a cat", **SMALL, "enable_hr": False, "denoising_strength": 0.7,
        "restore_faces": False, "tiling": False, "styles": [], "eta": 1.0, "s_noise": 1,
        "script_args": [], "alwayson_scripts": {}, "sampler_index": "Euler a",
        "do_not_save_samples": False, "save_images": False, "some_extension_field": 3,
    }  # fmt: skip
    assert post(compat_server, "txt2img", body).status_code == 200


def test_progress_shows_the_running_generation_and_interrupt_stops_only_the_caller_s(
    compat_server: Server,
) -> None:
    long = {"prompt": "a long one", "width": 256, "height": 256, "steps": 100}
    answers: dict[str, httpx.Response] = {}

    def run(name: str, key: str) -> None:
        answers[name] = post(compat_server, "txt2img", long, key)

    mine = threading.Thread(target=run, args=("mine", API_KEY))
    theirs = threading.Thread(target=run, args=("theirs", OTHER_KEY))
    mine.start()
    deadline = time.monotonic() + 30
    while (progress := api(compat_server).get_progress())["state"]["sampling_step"] < 2:
        assert time.monotonic() < deadline, progress
        time.sleep(0.05)
    # The denoiser's calls: sd-tiny's PNDM makes one more than the steps asked for.
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] in (100, 101)
    assert progress["state"]["job"] == "txt2img" and progress["eta_relative"] > 0
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    assert preview.format == "PNG"
    assert api(compat_server, OTHER_KEY).get_progress()["state"]["job_count"] == 0
    theirs.start()
    api(compat_server, OTHER_KEY).interrupt()  # the other key's call stops nothing of mine
    time.sleep(0.5)
    assert mine.is_alive()
    api(compat_server).interrupt()
    mine.join(timeout=30)
    theirs.join(timeout=120)
    assert answers["mine"].status_code == 200 and answers["mine"].json()["images"] == []
    assert len(answers["theirs"].json()["images"]) == 1  # ran to its end
    assert api(compat_server).get_progress()["state"]["job_count"] == 0


def test_basic_auth_needs_the_key_as_password(compat_server: Server) -> None:
    response = httpx.get(f"{compat_server.url}/sdapi/v1/sd-models", auth=("me", "wrong"))
    assert response.status_code == 401
    assert httpx.get(f"{compat_server.url}/sdapi/v1/sd-models").status_code == 401


def test_info_is_a_json_string_as_a1111_sends_it(compat_server: Server) -> None:
    response = post(compat_server, "txt2img", {"prompt": "a cat", **SMALL, "seed": 3})
    body = response.json()
    assert isinstance(body["info"], str) and json.loads(body["info"])["all_seeds"] == [3]


def test_the_native_work_budget_applies(compat_server: Server) -> None:
    big = {"prompt": "a cat", "width": 512, "height": 512, "steps": 150, "batch_size": 8}
    response = post(compat_server, "txt2img", big)
    assert response.status_code == 400 and "work" in response.json()["error"]
    assert len(response.headers["x-request-id"]) == 32


def test_both_layers_wait_in_the_native_queue(compat_server: Server) -> None:
    """Behind a running native job, an OpenAI and an A1111 request are admitted into the
    same queue: a native job submitted after them is told three are ahead of it."""
    url = compat_server.url
    long = {"prompt": "a long one", "width": 256, "height": 256, "num_inference_steps": 100}
    first = httpx.post(f"{url}/jobs", json=long, headers=AUTH).json()["id"]
    job_when(compat_server, first, stepped(1))
    small = {"prompt": "a cat", "size": "64x64", "num_inference_steps": 4}
    layers = [
        threading.Thread(
            target=httpx.post,
            args=(f"{url}/v1/images/generations",),
            kwargs={"json": small, "headers": AUTH, "timeout": 120},
        ),
        threading.Thread(
            target=post, args=(compat_server, "txt2img", {"prompt": "a cat", **SMALL})
        ),
    ]
    for thread in layers:
        thread.start()
    deadline = time.monotonic() + 10
    while api(compat_server).get_progress()["state"]["job_count"] == 0:  # A1111's admitted
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)  # and OpenAI's, sent at the same time
    last = httpx.post(
        f"{url}/jobs", json={"prompt": "a cat", "num_inference_steps": 2}, headers=AUTH
    )
    try:
        assert last.json()["queue_position"] == 3
    finally:
        httpx.delete(f"{url}/jobs/{first}", headers=AUTH)
        for thread in layers:
            thread.join(timeout=120)


def test_native_openai_and_a1111_images_share_one_pipeline_call(server: Server) -> None:
    """On the batching server: while a long job holds sd-tiny, one request from each API
    waits in its batch queue; cancelled, the three run as one batch of 3."""
    url = server.url
    long = {"prompt": "a long one", "width": 256, "height": 256, "num_inference_steps": 100}
    first = httpx.post(f"{url}/jobs", json=long, headers=AUTH).json()["id"]
    job_when(server, first, stepped(1))
    answers: dict[str, httpx.Response] = {}
    small = {"width": 64, "height": 64, "num_inference_steps": 4}

    def ask(name: str, path: str, body: dict[str, Any]) -> None:
        answers[name] = httpx.post(f"{url}{path}", json=body, headers=AUTH, timeout=120)

    asks = [
        ("native", "/generate/image", {"prompt": "a cat", "seed": 1, **small}),
        ("openai", "/v1/images/generations", {"prompt": "a dog", "size": "64x64",
                                              "num_inference_steps": 4, "seed": 2}),
        ("a1111", "/sdapi/v1/txt2img", {"prompt": "a cow", "seed": 3, **SMALL}),
    ]  # fmt: skip
    threads = [threading.Thread(target=ask, args=one) for one in asks]
    for thread in threads:
        thread.start()
    time.sleep(1)  # all three admitted and waiting behind the job's call
    httpx.delete(f"{url}/jobs/{first}", headers=AUTH)
    for thread in threads:
        thread.join(timeout=120)
    assert all(answer.status_code == 200 for answer in answers.values()), answers
    assert answers["native"].headers["X-Batch-Size"] == "3"
