from __future__ import annotations

import asyncio
import io
import json
import threading
from typing import Any

import pytest
from PIL import Image

from imagegen.hop import Generation
from imagegen.serving.encoding import (
    MEDIA_TYPES,
    build_answer,
    encode,
    encode_image,
    image_response,
)
from imagegen.serving.remote import Generated
from tests.conftest import PARAMETERS


@pytest.fixture
def image() -> Image.Image:
    return Image.effect_mandelbrot((64, 64), (-2, -1.5, 1, 1.5), 100).convert("RGB")


def test_png_carries_the_generation_parameters(image: Image.Image) -> None:
    decoded = Image.open(io.BytesIO(encode_image(image, PARAMETERS, "png", 90)))
    assert json.loads(decoded.text["parameters"]) == PARAMETERS.model_dump()


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_each_format_decodes_as_itself(image: Image.Image, output_format: str) -> None:
    decoded = Image.open(io.BytesIO(encode_image(image, PARAMETERS, output_format, 90)))
    assert decoded.format == output_format.upper()
    assert decoded.size == (64, 64)


def test_png_is_lossless(image: Image.Image) -> None:
    # Whatever deflate strategy makes it (run-length: imagegen.serving.encoding.PNG_STRATEGY).
    decoded = Image.open(io.BytesIO(encode_image(image, PARAMETERS, "png", 90)))
    assert decoded.tobytes() == image.tobytes()


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_quality_changes_lossy_encodings(image: Image.Image, output_format: str) -> None:
    low = encode_image(image, PARAMETERS, output_format, 5)
    high = encode_image(image, PARAMETERS, output_format, 95)
    assert len(low) < len(high)


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_encoding_is_byte_stable(image: Image.Image, output_format: str) -> None:
    assert encode_image(image, PARAMETERS, output_format, 80) == encode_image(
        image, PARAMETERS, output_format, 80
    )


def test_response_names_seed_model_type_batch_and_timings(image: Image.Image) -> None:
    generation = Generation(
        image=image,
        parameters=PARAMETERS,
        received=9.9,
        started=10.0,
        denoised=11.4,
        finished=11.5,
        batch_size=4,
    )
    response = image_response(encode(Generated([generation], seconds=1.75), "webp", 80))
    assert response.headers["content-type"] == MEDIA_TYPES["webp"]
    assert response.headers["x-seed"] == "42"
    assert response.headers["x-model"] == "sd-tiny:v1"
    assert response.headers["x-batch-size"] == "4"
    assert response.headers["server-timing"] == (
        "queue;dur=250.0, inference;dur=1500.0, hop;dur=150.0, setup;dur=100.0, decode;dur=100.0"
    )


def test_one_image_of_several_keeps_its_own_bytes_and_seed(image: Image.Image) -> None:
    generations = [
        Generation(
            image=image.rotate(90 * k),
            parameters=PARAMETERS.model_copy(update={"seed": 42 + k}),
            received=10.0,
            started=10.0,
            denoised=11.0,
            finished=11.0,
            batch_size=2,
        )
        for k in range(2)
    ]
    encoded = encode(Generated(generations, seconds=1.5), "png", 90)
    second = image_response(encoded.only(1))
    assert second.body == encode_image(generations[1].image, generations[1].parameters, "png", 90)
    assert second.headers["x-seed"] == "43" and encoded.images[0] != encoded.images[1]


def test_several_images_time_from_the_first_call_to_the_last(image: Image.Image) -> None:
    """Two calls of one batch that arrived at 9.75: the second waited for the first (part of
    its set-up), the decode is the last call's."""
    calls = [(10.0, 10.75, 11.0), (11.0, 12.25, 12.5)]
    generated = Generated(
        [
            Generation(
                image=image,
                parameters=PARAMETERS,
                received=9.75,
                started=s,
                denoised=d,
                finished=f,
                batch_size=1,
            )
            for s, d, f in calls
        ],
        seconds=3.0,
    )
    assert generated.timings.model_dump() == {
        "queue_ms": 500.0,
        "inference_ms": 2500.0,
        "hop_ms": 250.0,
        "setup_ms": 250.0,
        "decode_ms": 250.0,
    }


@pytest.mark.parametrize(("size", "count", "on_the_loop"), [(64, 2, True), (96, 1, False)])
def test_only_small_answers_are_built_on_the_event_loop(
    size: int, count: int, on_the_loop: bool
) -> None:
    """Two 64x64 images (8,192 pixels) cost less to encode than a thread hop; one 96x96 is
    built off the loop, as every larger answer is (test_hardening_e2e.py has eight large ones)."""
    picture = Image.new("RGB", (size, size))
    generation = Generation(
        image=picture, parameters=PARAMETERS, received=0, started=0, denoised=0, finished=0,
        batch_size=count,
    )  # fmt: skip
    generated = Generated([generation] * count, seconds=0.1)

    async def built_on() -> str:
        scope: dict[str, Any] = {"type": "http"}
        return await build_answer(scope, generated, lambda: threading.current_thread().name)

    assert (asyncio.run(built_on()) == threading.main_thread().name) is on_the_loop
