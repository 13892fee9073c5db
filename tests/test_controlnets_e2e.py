"""ControlNets over real HTTP, against a real `bentoml serve` of the demo model with its
trained ControlNet (``sd-shapes-control``): the shape lands where the control image puts it
(IoU measured as ``bench.controls`` measures it), colours still follow the prompt, scale 0 is
no control byte for byte, and AUTOMATIC1111's ControlNet extension API, replayed from its own
example and driven by the `webuiapi` client, gives the native API's image."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from bench.controls import iou
from harness.servers import Server
from imagegen.inputs import pack
from models.shapes import Scene, measure, shape_mask, silhouette
from tests.conftest import AUTH
from tests.test_a1111_e2e import api
from tests.test_jobs_e2e import job_when

pytestmark = pytest.mark.e2e

CONTROL = "sd-shapes-control"
LEFT = Scene("red", "circle", "blue", 28, (18, 32))
RIGHT = Scene("red", "circle", "blue", 28, (46, 32))


def shape_of(scene: Scene) -> Image.Image:
    return Image.fromarray(silhouette(scene))


def png(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content)).convert("RGB")


def native(server: Server, **fields: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/generate/image", json=fields, headers=AUTH, timeout=60)


def guided(server: Server, scene: Scene, prompt: str, **control: Any) -> Image.Image:
    controls = [{"name": CONTROL, "image": pack(shape_of(scene)), **control}]
    return png(native(server, prompt=prompt, seed=4, controlnets=controls))


def centre_x(image: Image.Image) -> float:
    _, mask = shape_mask(np.asarray(image))
    return float(np.nonzero(mask)[1].mean())


def test_models_list_the_controlnets_that_fit_and_what_they_guide(shapes_server: Server) -> None:
    [info] = httpx.get(f"{shapes_server.url}/models", headers=AUTH).json()
    assert [net["name"] for net in info["controlnets"]] == [CONTROL]
    assert info["control_modes"] == ["text-to-image", "image-to-image", "inpainting"]


@pytest.mark.parametrize("scene", [LEFT, RIGHT], ids=["left", "right"])
def test_the_trained_control_draws_the_shape_where_its_silhouette_is(
    shapes_server: Server, scene: Scene
) -> None:
    image = guided(shapes_server, scene, scene.caption)
    assert iou(image, scene) > 0.6
    assert abs(centre_x(image) - scene.centre[0]) < 6
    reading = measure(image)
    assert (reading.colour, reading.shape, reading.background) == ("red", "circle", "blue")


def test_concurrent_requests_each_get_their_own_control(shapes_server: Server) -> None:
    """Batching is on: requests guided by different images never share a pipeline call's
    maps, so each shape lands where its own silhouette is."""
    scenes = [LEFT, RIGHT] * 3
    with ThreadPoolExecutor(len(scenes)) as pool:
        images = list(pool.map(lambda scene: guided(shapes_server, scene, scene.caption), scenes))
    for scene, image in zip(scenes, images, strict=True):
        assert abs(centre_x(image) - scene.centre[0]) < 6


def test_colours_still_follow_the_prompt_under_the_control(shapes_server: Server) -> None:
    image = guided(shapes_server, LEFT, "a yellow circle on a purple background")
    reading = measure(image)
    assert (reading.colour, reading.background) == ("yellow", "purple")
    assert iou(image, LEFT) > 0.6


def test_an_outline_through_canny_guides_like_the_silhouette(shapes_server: Server) -> None:
    image = guided(shapes_server, RIGHT, RIGHT.caption, module="canny")
    assert iou(image, RIGHT) > 0.5


def test_scale_0_is_no_control_byte_for_byte(shapes_server: Server) -> None:
    plain = native(shapes_server, prompt=LEFT.caption, seed=4)
    controls = [{"name": CONTROL, "image": pack(shape_of(RIGHT)), "scale": 0}]
    off = native(shapes_server, prompt=LEFT.caption, seed=4, controlnets=controls)
    assert off.status_code == plain.status_code == 200
    assert off.content == plain.content  # the PNG's parameters too: no control applied


def test_a_job_takes_controls_too(shapes_server: Server) -> None:
    controls = [{"name": CONTROL, "image": pack(shape_of(LEFT))}]
    body = {"prompt": LEFT.caption, "seed": 4, "controlnets": controls}
    accepted = httpx.post(f"{shapes_server.url}/jobs", json=body, headers=AUTH, timeout=30)
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()["id"]
    job_when(shapes_server, job, lambda view: view["status"] == "succeeded")
    answer = httpx.get(f"{shapes_server.url}/jobs/{job}/result", headers=AUTH, timeout=30)
    assert iou(png(answer), LEFT) > 0.6


@pytest.mark.parametrize(
    ("control", "field"),
    [
        ({"name": "nope"}, "controlnets"),
        ({"image": "bm90IGFuIGltYWdl"}, "controlnets[0].image"),
        ({"module": "openpose"}, "controlnets.0.module"),
        ({"module": "canny", "threshold_a": 400}, "controlnets[0].threshold_a"),
        ({"start": 0.8, "end": 0.2}, "controlnets.0"),
    ],
)
def test_bad_controls_are_400s_naming_the_field(
    shapes_server: Server, control: dict[str, Any], field: str
) -> None:
    sent = {"name": CONTROL, "image": pack(shape_of(LEFT)), **control}
    response = native(shapes_server, prompt="a red circle", controlnets=[sent])
    assert response.status_code == 400, response.text
    body = response.json()
    named = [".".join(map(str, d["loc"])) for d in body.get("detail") or []]
    assert field in named, body


# AUTOMATIC1111's ControlNet extension.

# The body of Mikubill/sd-webui-controlnet's example, example/txt2img_example/api_txt2img.py
# at 56cec5b2958edf3b1807b7e7b2b1b5186dbd2f81, as it sends it; only the prompt, the image,
# the model's name and a seed (the example draws one) are this test's.
EXAMPLE = {
    "prompt": "a large avalanche",
    "negative_prompt": "",
    "batch_size": 1,
    "steps": 20,
    "cfg_scale": 7,
    "alwayson_scripts": {
        "controlnet": {
            "args": [
                {
                    "enabled": True,
                    "module": "none",
                    "model": "canny",
                    "weight": 1.0,
                    "image": "",
                    "resize_mode": "Crop and Resize",
                    "lowvram": False,
                    "processor_res": 64,
                    "threshold_a": 64,
                    "threshold_b": 64,
                    "guidance_start": 0.0,
                    "guidance_end": 1.0,
                    "control_mode": "Balanced",
                    "pixel_perfect": False,
                }
            ]
        }
    },
}


def a1111_images(server: Server, body: dict[str, Any]) -> list[np.ndarray]:
    response = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB"))
        for i in response.json()["images"]
    ]


def test_the_extension_s_own_example_gives_the_native_image(shapes_server: Server) -> None:
    unit = {**EXAMPLE["alwayson_scripts"]["controlnet"]["args"][0]}  # type: ignore[index]
    unit.update(model=f"{CONTROL} [0123abcd]", image=pack(shape_of(LEFT)))
    body = {**EXAMPLE, "prompt": LEFT.caption, "seed": 9}
    body["alwayson_scripts"] = {"controlnet": {"args": [unit]}}
    [replayed] = a1111_images(shapes_server, body)
    controls = [{"name": CONTROL, "image": unit["image"], "processor_res": 64}]
    same = native(
        shapes_server, prompt=LEFT.caption, seed=9, num_inference_steps=20,
        guidance_scale=7, controlnets=controls,
    )  # fmt: skip
    assert np.array_equal(replayed, np.asarray(png(same)))
    assert iou(Image.fromarray(replayed), LEFT) > 0.6


def test_webuiapi_s_controlnet_units_give_the_native_image(shapes_server: Server) -> None:
    client = api(shapes_server)
    assert client.controlnet_version() == 3
    assert client.controlnet_model_list() == [CONTROL]
    assert {"none", "canny", "invert"} <= set(client.controlnet_module_list())
    unit = webuiapi.ControlNetUnit(
        image=shape_of(RIGHT), module="canny", model=CONTROL, processor_res=64
    )
    made = client.txt2img(
        prompt=RIGHT.caption, seed=9, steps=20, cfg_scale=2, sampler_name="DDIM", width=64,
        height=64, controlnet_units=[unit],
    )  # fmt: skip
    controls = [
        {
            "name": CONTROL, "image": pack(shape_of(RIGHT)), "module": "canny",
            "threshold_a": 64, "threshold_b": 64, "processor_res": 64, "resize_mode": "fill",
        }
    ]  # fmt: skip
    same = native(
        shapes_server, prompt=RIGHT.caption, seed=9, num_inference_steps=20, guidance_scale=2,
        scheduler="ddim", controlnets=controls,
    )  # fmt: skip
    assert np.array_equal(np.asarray(made.image.convert("RGB")), np.asarray(png(same)))
    assert 'ControlNet 0: "Module: canny, Model: sd-shapes-control' in made.info["infotexts"][0]


def test_detect_answers_the_map_a_unit_would_guide_by(shapes_server: Server) -> None:
    detected = api(shapes_server).controlnet_detect(
        [shape_of(LEFT)], module="canny", processor_res=128, threshold_a=100, threshold_b=200
    )
    assert detected.info == "Success"
    [drawn] = detected.images
    edges = np.asarray(drawn)
    assert edges.shape[:2] == (128, 128)
    assert edges[:, :60].any() and not edges[:, 80:].any()  # the circle's outline, at the left


@pytest.mark.parametrize(
    ("unit", "field"),
    [
        ({"model": "control_v11p_sd15_canny [d14c016b]"}, "model"),
        ({"module": "openpose_full"}, "module"),
        ({"control_mode": "ControlNet is more important"}, "control_mode"),
        ({"image": ""}, "image"),
    ],
)
def test_what_the_extension_layer_cannot_do_is_a_422_naming_the_unit_field(
    shapes_server: Server, unit: dict[str, Any], field: str
) -> None:
    sent = {"enabled": True, "model": CONTROL, "image": pack(shape_of(LEFT)), **unit}
    body = {"prompt": "a", "alwayson_scripts": {"controlnet": {"args": [sent]}}}
    response = httpx.post(
        f"{shapes_server.url}/sdapi/v1/txt2img", json=body, headers=AUTH, timeout=30
    )
    assert response.status_code == 422, response.text
    assert f"alwayson_scripts.controlnet.args[0].{field}" in response.text
