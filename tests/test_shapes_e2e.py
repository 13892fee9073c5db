"""The demo model follows prompts, end to end: a real `bentoml serve` with its default model,
images read back by ``models.shapes.measure`` (the benchmark's measurement)."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image

from harness.servers import Server
from models.shapes import Reading, caption, measure
from tests.conftest import AUTH

pytestmark = pytest.mark.e2e


def drawn(server: Server, **fields: Any) -> Reading:
    response = httpx.post(f"{server.url}/generate/image", json=fields, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return measure(Image.open(io.BytesIO(response.content)))


def test_a_fresh_server_serves_the_demo_model(shapes_server: Server) -> None:
    [info] = httpx.get(f"{shapes_server.url}/models", headers=AUTH).json()
    assert (info["name"], info["default_steps"]) == ("sd-shapes", 20)
    assert (info["native_width"], info["native_height"]) == (64, 64)


@pytest.mark.parametrize(
    ("colour", "shape", "background"),
    [
        ("red", "circle", "blue"),
        ("yellow", "square", "black"),
        ("white", "triangle", "green"),
        ("orange", "square", "purple"),
        ("blue", "circle", "white"),
    ],
)
def test_text_to_image_draws_what_is_asked(
    shapes_server: Server, colour: str, shape: str, background: str
) -> None:
    reading = drawn(shapes_server, prompt=caption(colour, shape, background), seed=3)
    assert (reading.colour, reading.shape, reading.background) == (colour, shape, background)


def test_a_negative_prompt_steers_away_from_a_colour(shapes_server: Server) -> None:
    """The prompt leaves the square's colour to the model; naming the colour it picks in the
    negative prompt makes it draw the square in another (guidance 7: a negative prompt acts
    through guidance)."""
    prompt = caption(None, "square", "black")
    seeds = range(1, 5)
    plain = [drawn(shapes_server, prompt=prompt, seed=s, guidance_scale=7).colour for s in seeds]
    usual = max(set(plain), key=plain.count)
    assert usual is not None and plain.count(usual) >= 3, plain
    steered = [
        drawn(
            shapes_server,
            prompt=prompt,
            negative_prompt=caption(usual, "square", None),
            seed=s,
            guidance_scale=7,
        ).colour
        for s in seeds
    ]
    assert None not in steered and usual not in steered, steered
