"""Image-to-image and inpainting over real HTTP against `bentoml serve`: what the demo model
makes of an image (read back by ``models.shapes.measure``), and the plumbing on sd-tiny:
determinism, the PNG's record, concurrency with text-to-image, jobs, large inputs."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import statistics
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.servers import REPO, Server
from imagegen.inputs import pack
from models.shapes import Scene, caption, draw, measure
from tests.conftest import API_KEY, AUTH, SERVER_MAX_CONCURRENCY
from tests.test_jobs_e2e import client_command, job_when

pytestmark = pytest.mark.e2e

SCENE = Scene(colour="green", shape="circle", background="white", size=34, centre=(32, 32))
PICTURE = Image.fromarray(draw(SCENE))
# A square around the circle: white is repainted, black kept.
MASK = Image.new("L", (64, 64), 0)
MASK.paste(255, (12, 12, 52, 52))
INSIDE = np.asarray(MASK) > 0


def generated(server: Server, **fields: Any) -> httpx.Response:
    response = httpx.post(
        f"{server.url}/generate/image",
        json={"prompt": "a cat", **fields},
        headers=AUTH,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response


def pixels(response: httpx.Response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=float)


def distance(image: np.ndarray, reference: Image.Image) -> float:
    """Mean absolute difference per channel, 0 to 255."""
    return float(np.abs(image - np.asarray(reference, dtype=float)).mean())


def distances(server: Server, prompt: str, strength: float) -> list[float]:
    """How far image-to-image moves ``PICTURE`` at ``strength``, for three seeds."""
    return [
        distance(
            pixels(
                generated(server, prompt=prompt, image=pack(PICTURE), seed=s, strength=strength)
            ),
            PICTURE,
        )
        for s in (1, 2, 3)
    ]


def test_image_to_image_at_low_strength_stays_close_to_its_input(
    shapes_server: Server,
) -> None:
    """Asked for another scene, a low strength mostly keeps the input (sd-shapes, trained with
    offset noise, shifts colours a little even then); a high one draws the ask."""
    prompt = caption("red", "square", "blue")
    low, high = distances(shapes_server, prompt, 0.15), distances(shapes_server, prompt, 1.0)
    assert statistics.median(low) < statistics.median(high) / 3, (low, high)


def test_image_to_image_of_what_the_image_shows_keeps_it(shapes_server: Server) -> None:
    # The VAE's round trip alone costs about 5 levels on these images.
    kept = distances(shapes_server, caption(SCENE.colour, SCENE.shape, SCENE.background), 0.25)
    assert max(kept) < 8, kept


def red_square_inpainted(server: Server, seed: int) -> np.ndarray:
    """``PICTURE`` with the square ``MASK`` marks repainted as "a red square"."""
    return pixels(
        generated(
            server,
            prompt=caption("red", "square", "white"),
            image=pack(PICTURE),
            mask=pack(MASK),
            strength=1.0,
            seed=seed,
        )
    )


def test_inpainting_keeps_what_is_black_and_repaints_what_is_white(
    shapes_server: Server,
) -> None:
    image = red_square_inpainted(shapes_server, seed=1)
    difference = np.abs(image - np.asarray(PICTURE, dtype=float)).mean(axis=2)
    assert difference[~INSIDE].max() == 0
    assert difference[INSIDE].mean() > 30


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_inpainting_a_masked_square_with_a_red_square_makes_it_red(
    shapes_server: Server, seed: int
) -> None:
    image = red_square_inpainted(shapes_server, seed)
    reading = measure(image.astype(np.uint8))
    assert (reading.colour, reading.background) == ("red", "white"), reading


def test_an_edit_with_the_same_seed_and_inputs_is_byte_identical(server: Server) -> None:
    body = {"image": pack(PICTURE), "mask": pack(MASK), "strength": 0.8, "seed": 5}
    assert generated(server, **body).content == generated(server, **body).content


def test_the_png_records_the_mode_strength_and_input_hashes(server: Server) -> None:
    image, mask = pack(PICTURE), pack(MASK)
    response = generated(server, image=image, mask=mask, strength=0.5, seed=2)
    recorded = json.loads(Image.open(io.BytesIO(response.content)).text["parameters"])  # type: ignore[attr-defined]
    assert (recorded["mode"], recorded["strength"]) == ("inpainting", 0.5)
    assert recorded["image_sha256"] == hashlib.sha256(base64.b64decode(image)).hexdigest()
    assert recorded["mask_sha256"] == hashlib.sha256(base64.b64decode(mask)).hexdigest()
    assert image not in response.text and "pixels" not in recorded


def test_concurrent_edits_and_text_to_image_keep_their_own_results(server: Server) -> None:
    other = Image.new("RGB", (64, 64), (200, 40, 90))
    bodies: list[dict[str, Any]] = [
        {"seed": 11},
        {"seed": 11, "image": pack(PICTURE), "strength": 0.5},
        {"seed": 11, "image": pack(other), "strength": 0.5},
        {"seed": 11, "image": pack(PICTURE), "mask": pack(MASK)},
        {"seed": 12, "image": pack(other), "mask": pack(MASK), "strength": 0.5},
    ]
    alone = [pixels(generated(server, **body)) for body in bodies]
    with ThreadPoolExecutor(SERVER_MAX_CONCURRENCY) as pool:
        together = list(pool.map(lambda body: pixels(generated(server, **body)), bodies * 2))
    for index, image in enumerate(together):
        assert np.abs(image - alone[index % len(bodies)]).max() <= 1, index


def test_a_job_edits_and_counts_the_steps_it_runs(server: Server) -> None:
    body = {
        "prompt": "a cat",
        "image": pack(PICTURE),
        "mask": pack(MASK),
        "strength": 0.5,
        "num_inference_steps": 8,
        "scheduler": "euler",
        "seed": 9,
    }
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        accepted = client.post("/jobs", json=body)
        assert accepted.status_code == 202, accepted.text
        job = job_when(server, accepted.json()["id"], lambda job: job["status"] == "succeeded")
        assert job["progress"] == {"step": 4, "steps": 4, "current_pass": 1, "fraction": 1.0}
        assert job["parameters"]["mode"] == "inpainting"
        result = client.get(f"/jobs/{job['id']}/result")
    expected = pixels(generated(server, **body))
    assert np.abs(pixels(result) - expected).max() <= 1


def test_a_photograph_past_the_old_one_mib_limit_is_resized_to_the_asked_size(
    server: Server,
) -> None:
    photo = Image.effect_noise((1024, 1024), 90).convert("RGB")
    image = pack(photo)
    assert len(image) > 1024 * 1024
    response = generated(server, image=image, width=64, height=64, strength=0.5, seed=1)
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)


def test_the_command_line_client_sends_an_image_and_a_mask(server: Server, tmp_path: Path) -> None:
    PICTURE.save(tmp_path / "picture.png")
    MASK.save(tmp_path / "mask.png")
    output = tmp_path / "edited.png"
    arguments = ["a cat", "-o", str(output), "--key", API_KEY, "--strength", "0.5"]
    arguments += ["--image", str(tmp_path / "picture.png"), "--mask", str(tmp_path / "mask.png")]
    done = subprocess.run(
        client_command(server, *arguments), capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    recorded = json.loads(Image.open(output).text["parameters"])  # type: ignore[attr-defined]
    assert (recorded["mode"], recorded["strength"]) == ("inpainting", 0.5)
    sent = (tmp_path / "picture.png").read_bytes()
    assert recorded["image_sha256"] == hashlib.sha256(sent).hexdigest()
