"""ControlNets: stored and trained ones, the pipelines that run them, the preprocessors, the
request fields and sd-webui-controlnet's unit format (over real pipelines, no server)."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from imagegen.controls import ControlInput, detect, fit, pixel_perfect
from imagegen.engine.controlling import ControlNets
from imagegen.engine.generation import PipelineRunner, batch_key
from imagegen.errors import InvalidField, Unsupported
from imagegen.hop import Failure, Generation
from imagegen.inputs import InputLimits, pack
from imagegen.parameters import resolve
from imagegen.schemas import GenerationParameters, ImageRequest, WorkItem
from imagegen.serving.compat.controlnet import DetectRequest, detected, native_controls
from imagegen.serving.gateway import read_inputs
from imagegen.work import image_work
from models.control_training import CONTROL_TRAINING, control_hash
from models.controlnets import (
    CONTROL_RECIPES,
    SD_SHAPES_CONTROL,
    BadControlNet,
    ensure_controlnet,
    fitting_controlnets,
    import_controlnet,
    stored_controlnets,
)
from tests.conftest import TEST_CONTROLNETS, loaded_recipe

UNIT = "alwayson_scripts.controlnet.args[0]"
LIMITS = InputLimits(max_pixels=4096 * 4096, max_bytes=10**7)
FAMILY_MODELS = {"sd": "sd-tiny", "sdxl": "sdxl-tiny", "sd3": "sd3-tiny", "flux": "flux-tiny"}


def left_half(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size))
    image.paste((255, 255, 255), (0, 0, size // 2, size))
    return image


@cache
def runner_for(model: str) -> PipelineRunner:
    """``model`` with every stored ControlNet of the session offered: it takes those that fit."""
    stored = [ensure_controlnet(CONTROL_RECIPES[name]) for name in TEST_CONTROLNETS]
    nets = ControlNets(stored, "cpu", "float32")
    return PipelineRunner(loaded_recipe(model), 4, controlnets=nets)


def generate(runner: PipelineRunner, maps: list[Image.Image], **fields: Any) -> Generation:
    """One image of ``fields``, guided by one control per map (each by the model's first
    ControlNet unless ``fields`` name them), read and resolved as the service does."""
    name = runner.model.info.controlnets[0].name
    controls = [{"name": name, "image": pack(m)} for m in maps]
    request = ImageRequest(
        prompt="a", num_inference_steps=2, seed=1, **{"controlnets": controls, **fields}
    )
    info = runner.model.info
    edit, read = read_inputs(request, (info.native_width, info.native_height), LIMITS)
    item = WorkItem(
        id=uuid.uuid4().hex,
        parameters=resolve(request, info, 1, edit, read.digests),
        image=edit.image if edit else None,
        mask=edit.mask if edit else None,
        controls=read.maps,
    )
    (outcome,) = runner.generate_batch([item])
    assert not isinstance(outcome, Failure), outcome
    return outcome


def pixels(generation: Generation) -> np.ndarray:
    return np.asarray(generation.image, dtype=np.float64)


# The store and the trained ControlNet.


def test_the_committed_control_weights_were_trained_by_the_current_recipe() -> None:
    with safe_open(SD_SHAPES_CONTROL.weights, framework="pt") as weights:
        assert weights.metadata()["recipe"] == control_hash()


@pytest.mark.parametrize("field", ["steps", "lr", "outline_share"])
def test_the_control_recipe_hash_changes_with_its_training(field: str) -> None:
    changed = CONTROL_TRAINING.__class__(**{**CONTROL_TRAINING.__dict__, field: 0})
    assert control_hash(training=changed) != control_hash()


def test_stored_controlnets_are_versioned_and_found_by_family() -> None:
    stored = ensure_controlnet(SD_SHAPES_CONTROL)
    assert str(stored.tag) == SD_SHAPES_CONTROL.tag
    assert stored.info.labels["kind"] == "controlnet"
    assert stored.info.metadata["family"] == "sd"
    sd = {model.tag.name for model in stored_controlnets({"sd"})}
    assert {"sd-shapes-control", "sd-tiny-control"} <= sd
    assert "flux-tiny-control" not in sd


def test_import_refuses_a_controlnet_of_another_family(tmp_path: Any) -> None:
    CONTROL_RECIPES["sd-tiny-control"].build().save_pretrained(tmp_path)
    with pytest.raises(BadControlNet, match="sd family, not sdxl"):
        import_controlnet(tmp_path, "misfiled", "sdxl")
    with pytest.raises(BadControlNet, match="is not a FluxControlNetModel"):
        import_controlnet(tmp_path, "misfiled", "flux")
    assert torch.get_default_dtype() == torch.float32  # diffusers' failed load leaves it set


# What each model is offered, and what runs.


def test_a_controlnet_is_offered_only_to_the_models_whose_denoiser_it_fits() -> None:
    assert [n.name for n in runner_for("sd-tiny").model.info.controlnets] == ["sd-tiny-control"]
    shapes = runner_for("sd-shapes").model.info.controlnets
    assert [n.name for n in shapes] == ["sd-shapes-control"]


def test_a_controlnet_that_fits_no_served_model_is_neither_loaded_nor_declared() -> None:
    stored = [ensure_controlnet(CONTROL_RECIPES[name]) for name in TEST_CONTROLNETS]
    nets = ControlNets(stored, "cpu", "float32")
    nets.for_model(loaded_recipe("sd-tiny"))
    assert [tag.split(":")[0] for tag in nets.loaded] == ["sd-tiny-control"]
    loaded_recipe("sdxl-tiny")  # stored: its denoiser's config is read from the store
    declared = fitting_controlnets(["sd-tiny", "sdxl-tiny"], {"sd", "sdxl"})
    assert sorted(n.tag.name for n in declared) == ["sd-tiny-control", "sdxl-tiny-control"]


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_each_family_s_tiny_controlnet_guides_its_model(family: str) -> None:
    runner = runner_for(FAMILY_MODELS[family])
    plain = generate(runner, [])
    guided = generate(runner, [left_half()])
    other = generate(runner, [left_half().transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert np.abs(pixels(guided) - pixels(plain)).mean() > 1
    # Random weights barely look at the image (the trained one's test reads the place).
    assert not np.array_equal(pixels(guided), pixels(other))
    assert guided.parameters.controlnets[0].name.startswith(f"{FAMILY_MODELS[family]}-control")


def test_sd3_s_controlnets_guide_text_to_image_only() -> None:
    assert runner_for("sd3-tiny").model.info.control_modes == ["text-to-image"]
    assert runner_for("flux-tiny").model.info.control_modes == [
        "text-to-image",
        "image-to-image",
        "inpainting",
    ]


@pytest.mark.parametrize("model", ["sd-tiny", "sdxl-tiny", "flux-tiny"])
def test_controls_guide_image_to_image_inpainting_and_hires_fix(model: str) -> None:
    runner = runner_for(model)
    picture = pack(Image.new("RGB", (64, 64), (200, 40, 40)))
    mask = pack(left_half().convert("L"))
    edit = generate(runner, [left_half()], image=picture, strength=0.5)
    assert edit.parameters.mode == "image-to-image"
    painted = generate(runner, [left_half()], image=picture, mask=mask)
    assert painted.parameters.mode == "inpainting"
    upscaler = "Lanczos" if model == "flux-tiny" else "Latent"
    hires = generate(runner, [left_half()], hires={"scale": 2, "upscaler": upscaler})
    assert hires.image.size == (128, 128)


def test_two_controlnets_guide_one_call_together() -> None:
    runner = runner_for("sd-tiny")
    one = generate(runner, [left_half()])
    both = generate(runner, [left_half(), left_half().transpose(Image.Transpose.ROTATE_90)])
    assert np.abs(pixels(both) - pixels(one)).mean() > 1
    assert len(both.parameters.controlnets) == 2


def test_the_control_pipelines_share_every_weight_of_the_model() -> None:
    runner = runner_for("sd-tiny")
    model, controls = runner.model, runner.controls
    for pipeline in controls.pipelines.values():
        assert pipeline.unet is model.pipeline.unet
        assert pipeline.vae is model.pipeline.vae
        assert pipeline.text_encoder is model.pipeline.text_encoder
        assert pipeline.controlnet is controls.networks[controls.infos[0].tag]


def test_a_call_s_controlnets_never_reach_the_shared_pipelines() -> None:
    runner = runner_for("sd-tiny")
    shared = {mode: p.controlnet for mode, p in runner.controls.pipelines.items()}
    generate(runner, [left_half(), left_half()])
    assert {mode: p.controlnet for mode, p in runner.controls.pipelines.items()} == shared


# Requests.


def test_scale_0_leaves_a_control_out_of_the_call() -> None:
    runner = runner_for("sd-tiny")
    name = runner.model.info.controlnets[0].name
    off = generate(runner, [], controlnets=[{"name": name, "image": pack(left_half()), "scale": 0}])
    assert off.parameters.controlnets == []
    assert np.array_equal(pixels(off), pixels(generate(runner, [])))


@pytest.mark.parametrize(
    ("model", "fields", "message"),
    [
        ("sd-tiny", {"controlnets": [{"name": "nope", "image": "-"}]}, "must be a ControlNet"),
        (
            "sd-tiny",
            {"controlnets": [{"name": "sd-shapes-control", "image": "-"}]},
            "must be a ControlNet of sd-tiny",
        ),
        (
            "sd3-tiny",
            {"controlnets": [{"name": "sd3-tiny-control", "image": "-"}], "hires": {}},
            "cannot guide hires fix's second pass",
        ),
    ],
)
def test_what_a_model_s_controls_cannot_do_is_refused_naming_the_field(
    model: str, fields: dict[str, Any], message: str
) -> None:
    request = ImageRequest(prompt="a", **fields)
    with pytest.raises(InvalidField, match=message) as refused:
        resolve(request, runner_for(model).model.info, control_digests=["x"])
    assert refused.value.field == "controlnets"


def test_sd3_refuses_a_control_on_an_edit() -> None:
    picture = pack(Image.new("RGB", (64, 64)))
    request = ImageRequest(
        prompt="a", image=picture, controlnets=[{"name": "sd3-tiny-control", "image": picture}]
    )
    edit, controls = read_inputs(request, (64, 64), LIMITS)
    info = runner_for("sd3-tiny").model.info
    with pytest.raises(InvalidField, match="cannot guide image-to-image"):
        resolve(request, info, 1, edit, controls.digests)


def test_a_control_span_must_start_before_it_ends() -> None:
    with pytest.raises(ValueError, match="`start` must be less than `end`"):
        ImageRequest(
            prompt="a", controlnets=[{"name": "n", "image": "-", "start": 0.5, "end": 0.5}]
        )


def test_bad_control_images_are_refused_naming_the_control() -> None:
    request = ImageRequest(
        prompt="a",
        controlnets=[
            {"name": "sd-tiny-control", "image": pack(left_half())},
            {"name": "sd-tiny-control", "image": "bm90IGFuIGltYWdl"},
        ],
    )
    with pytest.raises(InvalidField, match=r"`controlnets\[1\]\.image` must be a PNG") as refused:
        read_inputs(request, (64, 64), LIMITS)
    assert refused.value.field == "controlnets[1].image"


def test_the_batch_key_holds_each_control_and_its_image() -> None:
    def key(*controls: dict[str, Any]) -> Any:
        fields = {**PARAMETERS_FIELDS, "controlnets": list(controls)}
        return batch_key(GenerationParameters.model_validate(fields))

    one = {**CONTROL, "image_sha256": "a"}
    keys = {key(one), key(), key({**one, "image_sha256": "b"}), key({**one, "scale": 0.5})}
    assert len(keys) == 4


CONTROL = {"name": "c:v1", "scale": 1.0, "start": 0.0, "end": 1.0, "module": "none"}
PARAMETERS_FIELDS: dict[str, Any] = {
    "prompt": "a",
    "negative_prompt": "",
    "width": 64,
    "height": 64,
    "num_inference_steps": 4,
    "guidance_scale": 7.5,
    "seed": 1,
    "scheduler": "euler",
    "model": "sd-tiny:v1",
}


def test_each_controlnet_adds_to_an_image_s_work() -> None:
    control = {**CONTROL, "image_sha256": "a"}
    works = [
        image_work(
            GenerationParameters.model_validate({**PARAMETERS_FIELDS, "controlnets": [control] * n})
        )
        for n in (0, 1, 2)
    ]
    assert works[0] < works[1] < works[2]


# Preprocessors.


def square(size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    image.paste((0, 0, 0), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return image


def test_canny_draws_a_square_s_outline_and_nothing_inside_it() -> None:
    edges = np.asarray(detect(square(), "canny", resolution=128))[:, :, 0]
    assert edges[30:34, 40:88].any() and edges[40:88, 30:34].any()
    assert not edges[48:80, 48:80].any() and not edges[:20, :20].any()
    assert set(np.unique(edges)) <= {0, 255}


@pytest.mark.parametrize(
    ("module", "check"),
    [
        (
            "invert",
            lambda out: out[0, 0].tolist() == [0, 0, 0] and out[64, 64].tolist() == [255] * 3,
        ),
        ("threshold", lambda out: set(np.unique(out)) <= {0, 255}),
        ("scribble_xdog", lambda out: out[64, 64].tolist() == [0, 0, 0]),
        ("lineart_standard", lambda out: out.shape == (128, 128, 3)),
        ("blur_gaussian", lambda out: 0 < out[32, 64, 0] < 255),
        ("none", lambda out: np.array_equal(out, np.asarray(square()))),
    ],
)
def test_each_preprocessor_draws_its_map(module: str, check: Callable[[np.ndarray], bool]) -> None:
    assert check(np.asarray(detect(square(), module, resolution=128)))


def test_a_module_works_at_its_resolution_and_invert_at_the_image_s_own() -> None:
    assert detect(square(128), "canny", resolution=64).size == (64, 64)
    assert detect(square(128), "invert", resolution=64).size == (128, 128)


def test_a_native_threshold_out_of_range_is_refused_naming_it() -> None:
    with pytest.raises(
        InvalidField, match=r"\(Low Threshold\) must be between 1 and 255"
    ) as refused:
        detect(square(), "canny", threshold_a=300, field="controlnets[0]")
    assert refused.value.field == "controlnets[0].threshold_a"


@pytest.mark.parametrize(
    ("mode", "corner"),
    [("resize", (255, 255, 255)), ("crop", (255, 255, 255)), ("fill", (255, 255, 255))],
)
def test_each_resize_mode_fits_the_map_to_the_output(mode: Any, corner: tuple[int, ...]) -> None:
    wide = Image.new("RGB", (200, 100), (255, 255, 255))
    fitted = fit(wide, (64, 96), mode)
    assert fitted.size == (64, 96)
    assert tuple(fitted.getpixel((0, 0))) == corner


def test_crop_keeps_the_centre_and_fill_keeps_everything() -> None:
    wide = Image.new("RGB", (200, 100))
    wide.paste((255, 255, 255), (0, 0, 20, 100))  # a white band at the left edge
    assert np.asarray(fit(wide, (100, 100), "crop"))[:, :, 0].max() == 0  # cut off
    assert np.asarray(fit(wide, (100, 100), "fill"))[:, :10, 0].max() > 200  # kept


def test_pixel_perfect_draws_the_map_at_the_size_it_is_fitted_to() -> None:
    assert pixel_perfect((1024, 512), (512, 256), "crop") == 256
    assert pixel_perfect((1000, 500), (512, 512), "crop") == 512
    assert pixel_perfect((1000, 500), (512, 512), "fill") == 256


def test_read_inputs_draws_the_maps_at_the_output_size() -> None:
    request = ImageRequest(
        prompt="a",
        width=96,
        height=64,
        controlnets=[{"name": "n", "image": pack(square(256)), "module": "canny"}],
    )
    _, controls = read_inputs(request, (64, 64), LIMITS)
    assert len(controls.maps) == len(controls.digests) == 1
    assert ControlInput(image="x").module == "none"


# sd-webui-controlnet's units.


def unit(**fields: Any) -> dict[str, Any]:
    return {"enabled": True, "model": "sd-tiny-control", "image": pack(left_half()), **fields}


def translated(*units: dict[str, Any], init_image: str | None = None) -> list[dict[str, Any]]:
    info = runner_for("sd-tiny").model.info
    return native_controls({"controlnet": {"args": list(units)}}, info, init_image)


def test_a_unit_translates_field_by_field() -> None:
    [control] = translated(
        unit(
            module="canny",
            model="sd-tiny-control [a1b2c3d4]",
            weight=0.8,
            resize_mode="Just Resize",
            processor_res=256,
            threshold_a=50,
            threshold_b=150,
            guidance_start=0.1,
            guidance_end=0.9,
            control_mode="Balanced",
        )
    )
    assert control == {
        "name": "sd-tiny-control",
        "image": unit()["image"],
        "module": "canny",
        "threshold_a": 50,
        "threshold_b": 150,
        "processor_res": 256,
        "resize_mode": "resize",
        "scale": 0.8,
        "start": 0.1,
        "end": 0.9,
    }


def test_a_unit_keeps_the_extension_s_quirks() -> None:
    old = {k: v for k, v in unit().items() if k != "image"}
    [control] = translated(
        {**old, "input_image": unit()["image"], "guidance": 0.5, "lowvram": True},
        {"model": "sd-tiny-control"},  # not enabled: skipped
    )
    assert (control["image"], control["end"]) == (unit()["image"], 0.5)
    [defaults] = translated(unit(module="canny", threshold_a=-1, threshold_b=999, resize_mode=2))
    assert (defaults["threshold_a"], defaults["threshold_b"]) == (None, None)
    assert (defaults["processor_res"], defaults["resize_mode"]) == (512, "fill")
    [perfect] = translated(unit(module="invert (from white bg & black line)", pixel_perfect=True))
    assert (perfect["module"], perfect["processor_res"]) == ("invert", None)
    [from_init] = translated(unit(image=None), init_image="init")
    assert from_init["image"] == "init"


@pytest.mark.parametrize(
    ("sent", "field"),
    [
        (unit(model="unknown [123abc]"), "alwayson_scripts.controlnet.args[0].model"),
        (unit(module="openpose"), "alwayson_scripts.controlnet.args[0].module"),
        (
            unit(control_mode="ControlNet is more important"),
            "alwayson_scripts.controlnet.args[0].control_mode",
        ),
        (unit(resize_mode="Stretch"), "alwayson_scripts.controlnet.args[0].resize_mode"),
        (unit(image={"image": "x", "mask": "y"}), "alwayson_scripts.controlnet.args[0].mask"),
        (unit(image=None), "alwayson_scripts.controlnet.args[0].image"),
        (unit(weight=3), "alwayson_scripts.controlnet.args[0].weight"),
    ],
)
def test_what_the_layer_cannot_do_is_a_422_naming_the_unit_s_field(
    sent: dict[str, Any], field: str
) -> None:
    with pytest.raises(Unsupported) as refused:
        translated(sent)
    assert refused.value.field == field


def test_other_scripts_and_too_many_units_are_refused() -> None:
    info = runner_for("sd-tiny").model.info
    with pytest.raises(Unsupported, match="only `controlnet`"):
        native_controls({"adetailer": {"args": []}}, info)
    with pytest.raises(Unsupported, match="at most 3 units"):
        translated(*[unit()] * 4)
    assert native_controls({"ControlNet": {"args": []}}, info) == []


def test_detect_answers_each_image_s_map() -> None:
    body = DetectRequest(
        controlnet_module="canny",
        controlnet_input_images=[pack(square(256))],
        controlnet_processor_res=128,
    )
    [drawn] = detected(body, LIMITS)
    assert Image.open(io.BytesIO(base64.b64decode(drawn))).size == (128, 128)
