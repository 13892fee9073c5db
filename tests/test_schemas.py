from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from imagegen.engine.schedulers import SCHEDULER_NAMES, SCHEDULERS
from imagegen.schemas import IMAGE_REQUEST_EXAMPLE, MAX_SEED, ImageRequest, ImagesRequest

VALID = {"prompt": "a cat"}


@pytest.mark.parametrize(
    ("change", "field", "error_type"),
    [
        ({"prompt": ""}, "prompt", "string_too_short"),
        ({"prompt": "x" * 2001}, "prompt", "string_too_long"),
        ({"negative_prompt": "x" * 2001}, "negative_prompt", "string_too_long"),
        ({"width": 100}, "width", "multiple_of"),
        ({"width": 56}, "width", "greater_than_equal"),
        ({"height": 2056}, "height", "less_than_equal"),
        ({"num_inference_steps": 0}, "num_inference_steps", "greater_than_equal"),
        ({"num_inference_steps": 151}, "num_inference_steps", "less_than_equal"),
        ({"guidance_scale": -0.5}, "guidance_scale", "greater_than_equal"),
        ({"guidance_scale": 30.5}, "guidance_scale", "less_than_equal"),
        ({"seed": -1}, "seed", "greater_than_equal"),
        ({"seed": MAX_SEED + 1}, "seed", "less_than_equal"),
        ({"scheduler": "k_lms"}, "scheduler", "literal_error"),
        ({"output_format": "gif"}, "output_format", "literal_error"),
        ({"quality": 0}, "quality", "greater_than_equal"),
        ({"quality": 101}, "quality", "less_than_equal"),
        ({"steps": 4}, "steps", "extra_forbidden"),
        ({"image": "aGk=", "strength": 0}, "strength", "greater_than"),
        ({"image": "aGk=", "strength": 1.5}, "strength", "less_than_equal"),
        ({"mask": "aGk="}, "mask", "value_error"),
        ({"strength": 0.5}, "strength", "value_error"),
    ],
)
def test_out_of_bounds_field_is_rejected_by_name(
    change: dict[str, Any], field: str, error_type: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        ImageRequest.model_validate({**VALID, **change})
    [error] = caught.value.errors()
    assert error["loc"] == (field,)
    assert error["type"] == error_type


def test_missing_prompt_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        ImageRequest.model_validate({})
    assert [e["loc"] for e in caught.value.errors()] == [("prompt",)]


@pytest.mark.parametrize(
    "change",
    [
        {"width": 64, "height": 2048},
        {"num_inference_steps": 1},
        {"num_inference_steps": 150},
        {"guidance_scale": 0},
        {"guidance_scale": 30},
        {"seed": 0},
        {"seed": MAX_SEED},
        {"quality": 1, "output_format": "jpeg"},
        {"prompt": "x" * 2000},
    ],
)
def test_values_on_the_bounds_are_accepted(change: dict[str, Any]) -> None:
    ImageRequest.model_validate({**VALID, **change})


def test_blank_fields_default_to_the_model() -> None:
    request = ImageRequest.model_validate(VALID)
    model_dependent = ("width", "height", "num_inference_steps", "guidance_scale", "scheduler")
    assert all(getattr(request, name) is None for name in model_dependent)
    assert request.seed is None
    assert (request.output_format, request.quality, request.negative_prompt) == ("png", 90, "")


def test_example_body_is_valid() -> None:
    ImageRequest.model_validate(IMAGE_REQUEST_EXAMPLE)


def test_every_field_is_documented_with_bounds_where_numeric() -> None:
    properties = ImageRequest.model_json_schema()["properties"]
    assert set(properties) == set(ImageRequest.model_fields)
    for name, schema in properties.items():
        assert schema.get("description"), f"{name} has no description"
    for name in ("width", "height", "num_inference_steps", "guidance_scale", "seed"):
        [bounded, _null] = properties[name]["anyOf"]
        assert {"minimum", "maximum"} <= set(bounded), name
    assert {"minimum", "maximum"} <= set(properties["quality"])


def test_scheduler_names_match_the_registry() -> None:
    assert set(SCHEDULER_NAMES) == set(SCHEDULERS)
    assert {"ddim", "euler", "euler_a", "dpm++", "pndm", "lms"} <= set(SCHEDULER_NAMES)


def test_images_request_example_is_valid_and_documents_num_images() -> None:
    schema = ImagesRequest.model_json_schema()
    ImagesRequest.model_validate(schema["example"])
    assert schema["properties"]["num_images"]["description"]
    assert (
        schema["properties"]["num_images"]["minimum"],
        schema["properties"]["num_images"]["maximum"],
    ) == (1, 8)


@pytest.mark.parametrize(("seed", "count"), [(MAX_SEED, 1), (MAX_SEED - 7, 8), (0, 8)])
def test_images_seeds_up_to_the_maximum_are_accepted(seed: int, count: int) -> None:
    ImagesRequest(prompt="a cat", seed=seed, num_images=count)


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        ({"width": 65}, "`width` must be a multiple of 8, but is 65."),
        ({"width": 56}, "`width` must be at least 64, but is 56."),
        ({"height": 2056}, "`height` must be at most 2048, but is 2056."),
        ({"guidance_scale": float("nan")}, "`guidance_scale` must be a finite number, but is nan."),
        ({"guidance_scale": float("inf")}, "`guidance_scale` must be a finite number, but is inf."),
        ({"seed": "abc"}, "`seed` must be an integer, but is 'abc'."),
        ({"prompt": ""}, "`prompt` must not be empty."),
        ({"prompt": "x" * 2001}, "`prompt` must be at most 2000 characters, but is 2001."),
        ({"steps": 4}, "`steps` is not a field of this request; `/docs` lists the fields."),
        (
            {"output_format": "gif"},
            "`output_format` must be one of 'png', 'jpeg', 'webp', but is 'gif'.",
        ),
    ],
)
def test_each_violation_is_a_sentence_naming_field_rule_and_value(
    change: dict[str, Any], sentence: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        ImagesRequest.model_validate({**VALID, **change})
    assert [error["msg"] for error in caught.value.errors()] == [sentence]


def test_a_missing_field_and_a_wrong_body_say_so() -> None:
    with pytest.raises(ValidationError, match=r"`prompt` is required\."):
        ImageRequest.model_validate({})
    with pytest.raises(ValidationError, match=r"must be a JSON object, but is \[1\]"):
        ImageRequest.model_validate_json("[1]")


def test_a_long_value_is_described_not_echoed() -> None:
    with pytest.raises(ValidationError) as caught:
        ImageRequest.model_validate({**VALID, "scheduler": "k" * 500})
    message = caught.value.errors()[0]["msg"]
    assert "500 characters long" in message and "k" * 41 not in message


def test_seeds_past_the_maximum_are_refused_in_a_sentence() -> None:
    with pytest.raises(ValidationError) as caught:
        ImagesRequest(prompt="a cat", seed=MAX_SEED, num_images=2)
    assert caught.value.errors()[0]["msg"] == (
        f"`seed` + `num_images` - 1 must be at most {MAX_SEED}, but is {MAX_SEED + 1}."
    )
