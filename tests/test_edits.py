"""Image-to-image and inpainting in-process: the pipelines of each mode share the loaded
weights, calls never mix modes, edits are deterministic, and bad inputs are 400s that name
their field."""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from imagegen.engine.generation import PipelineRunner, plan_calls
from imagegen.engine.loading import LoadedModel, load_model
from imagegen.errors import InvalidField
from imagegen.hop import Generation
from imagegen.inputs import pack, read_edit
from imagegen.parameters import resolve
from imagegen.schemas import GenerationParameters, ImageRequest, WorkItem
from imagegen.work import fixed_work, image_work
from models.loading import load_pipeline
from models.recipes import SD_TINY, SD_TINY_INPAINTING
from models.store import ensure_built
from tests.conftest import PARAMETERS
from tests.test_inputs import DEFAULTS, png

# A fixed picture, so an edit's output can be compared with what it started from.
PICTURE = Image.effect_noise((64, 64), 80).convert("RGB")
MASK = Image.new("L", (64, 64), 0)
MASK.paste(255, (16, 16, 48, 48))
INSIDE = np.asarray(MASK) > 0


def edit_item(model: LoadedModel, **fields: Any) -> WorkItem:
    """A work item as the gateway makes it from a request body."""
    request = ImageRequest(**{"prompt": "a cat", "seed": 3, **fields})
    edit = None
    if request.image is not None:
        edit = read_edit(request.image, request.mask, request.width, request.height, DEFAULTS)
    parameters = resolve(request, model.info, edit=edit)
    return WorkItem(
        id=f"item-{parameters.seed}-{parameters.mode}",
        parameters=parameters,
        image=edit.image if edit else None,
        mask=edit.mask if edit else None,
    )


def made(runner: PipelineRunner, *items: WorkItem) -> list[np.ndarray]:
    outcomes = runner.generate_batch(list(items))
    assert all(isinstance(outcome, Generation) for outcome in outcomes), outcomes
    return [np.asarray(outcome.image, dtype=float) for outcome in outcomes]  # type: ignore[union-attr]


def test_every_mode_runs_on_the_loaded_weights(tiny_model: LoadedModel) -> None:
    pipelines = tiny_model.pipelines
    assert tiny_model.info.modes == ["text-to-image", "image-to-image", "inpainting"]
    assert type(pipelines["image-to-image"]).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(pipelines["inpainting"]).__name__ == "StableDiffusionInpaintPipeline"
    for pipeline in pipelines.values():
        for part in ("unet", "vae", "text_encoder"):
            assert getattr(pipeline, part) is getattr(tiny_model.pipeline, part)


def test_the_edit_pipelines_keep_the_loaded_dtype() -> None:
    # diffusers' from_pipe casts to float32 unless told otherwise: a float16 model's shared
    # weights would double in place.
    loaded = load_pipeline(ensure_built(SD_TINY).path, dtype="bfloat16")
    assert loaded.image_to_image is not None
    for pipeline in (loaded.pipeline, loaded.image_to_image, loaded.inpainting):
        assert pipeline.unet.dtype == torch.bfloat16


def test_inpainting_keeps_the_unmasked_pixels_and_repaints_the_masked(
    runner: PipelineRunner,
) -> None:
    [inpainted] = made(runner, edit_item(runner.model, image=pack(PICTURE), mask=pack(MASK)))
    difference = np.abs(inpainted - np.asarray(PICTURE, dtype=float)).mean(axis=2)
    assert difference[~INSIDE].max() == 0  # black is kept exactly
    assert difference[INSIDE].mean() > 20


def test_an_edit_with_the_same_seed_and_inputs_is_the_same_image(runner: PipelineRunner) -> None:
    item = edit_item(runner.model, image=pack(PICTURE), mask=pack(MASK), strength=0.8)
    first, second = made(runner, item), made(runner, item)
    assert np.array_equal(first[0], second[0])


def test_a_batched_edit_matches_its_unbatched_image_within_one_level(
    tiny_model: LoadedModel,
) -> None:
    alone = PipelineRunner(tiny_model)
    batched = PipelineRunner(tiny_model, max_batch_size=4)
    other = Image.new("RGB", (64, 64), (30, 200, 90))
    items = [
        edit_item(tiny_model, image=pack(PICTURE), mask=pack(MASK)),
        edit_item(tiny_model, image=pack(other), mask=pack(MASK), seed=4),
    ]
    together = made(batched, *items)
    for item, image in zip(items, together, strict=True):
        [single] = made(alone, item)
        assert np.abs(image - single).max() <= 1


def test_calls_never_mix_modes_or_strengths() -> None:
    text = PARAMETERS
    edits = [
        text.model_copy(update={"mode": "image-to-image", "strength": 0.5}),
        text.model_copy(update={"mode": "image-to-image", "strength": 0.75}),
        text.model_copy(update={"mode": "inpainting", "strength": 0.5}),
        text.model_copy(update={"mode": "image-to-image", "strength": 0.5, "seed": 7}),
    ]
    assert plan_calls([text, *edits], max_batch_size=8) == [[0], [1, 4], [2], [3]]


def test_an_edit_costs_the_steps_it_runs_and_the_encoding_of_its_input() -> None:
    half = PARAMETERS.model_copy(update={"mode": "image-to-image", "strength": 0.5})
    assert half.denoising_steps == PARAMETERS.num_inference_steps // 2
    steps = image_work(PARAMETERS) - fixed_work(PARAMETERS)
    assert image_work(half) - fixed_work(half) == pytest.approx(steps / 2)
    # The VAE encode of its input, half a decode's worth, on top of the decode.
    assert fixed_work(half) == pytest.approx(fixed_work(PARAMETERS) * 1.5)


def test_too_few_steps_for_the_strength_is_refused(tiny_model: LoadedModel) -> None:
    with pytest.raises(InvalidField) as caught:
        edit_item(tiny_model, image=pack(PICTURE), strength=0.2, num_inference_steps=4)
    assert caught.value.field == "strength"
    assert "must be at least 1 (the steps an edit runs), but is 0.2 x 4" in caught.value.message


def test_the_edit_is_recorded_in_the_parameters(tiny_model: LoadedModel) -> None:
    item = edit_item(tiny_model, image=pack(PICTURE), mask=pack(MASK), strength=0.5)
    parameters: GenerationParameters = item.parameters
    assert (parameters.mode, parameters.strength) == ("inpainting", 0.5)
    sent = base64.b64decode(pack(PICTURE))
    assert parameters.image_sha256 == hashlib.sha256(sent).hexdigest()
    text = edit_item(tiny_model).parameters
    assert (text.mode, text.strength, text.image_sha256) == ("text-to-image", None, None)


@pytest.fixture(scope="module")
def inpainting_model() -> LoadedModel:
    return load_model(ensure_built(SD_TINY_INPAINTING))


def test_a_dedicated_inpainting_model_serves_every_mode_as_such(
    inpainting_model: LoadedModel,
) -> None:
    assert inpainting_model.info.pipeline == "StableDiffusionInpaintPipeline"
    assert inpainting_model.dedicated_inpainting
    assert inpainting_model.pipeline.unet.config.in_channels == 9
    runner = PipelineRunner(inpainting_model)
    text, image, inpainted = made(
        runner,
        edit_item(inpainting_model),
        edit_item(inpainting_model, image=pack(PICTURE)),
        edit_item(inpainting_model, image=pack(PICTURE), mask=pack(MASK)),
    )
    assert text.shape == image.shape == inpainted.shape == (64, 64, 3)
    assert np.abs(inpainted - np.asarray(PICTURE, dtype=float))[~INSIDE].max() == 0


def post(client: TestClient, **fields: Any) -> Any:
    return client.post("/generate/image", json={"prompt": "a cat", **fields})


@pytest.mark.parametrize(
    ("fields", "field", "expected"),
    [
        ({"mask": pack(MASK)}, "mask", "`mask` must come with `image`, which is missing."),
        ({"strength": 0.5}, "strength", "`strength` must come with `image`, which is missing."),
        (
            {"image": base64.b64encode(png(20000, 20000, 8, 2, None)).decode()},
            "image",
            "`image` must have at most",
        ),
        ({"image": "%%%"}, "image", "`image` must be base64, but does not decode."),
        (
            {"image": pack(PICTURE), "mask": pack(Image.new("L", (72, 64)))},
            "mask",
            "`mask` must be the size of `image` (64x64), but is 72x64.",
        ),
    ],
    ids=["mask-alone", "strength-alone", "bomb", "bad-base64", "mask-size"],
)
def test_a_bad_image_field_is_a_400_naming_it(
    client: TestClient, fields: dict[str, Any], field: str, expected: str
) -> None:
    response = post(client, **fields)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["detail"][0]["loc"] == [field]
    assert body["error"].startswith(expected)
    assert body["request_id"] == response.headers["x-request-id"]


def test_an_edit_over_http_answers_the_image_size(client: TestClient) -> None:
    response = post(client, image=pack(Image.new("RGB", (96, 72), (9, 9, 9))), seed=1)
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (96, 72)
