"""OpenAI's Images API against a real `bentoml serve`, driven by the published `openai` SDK
as its users drive it: `images.generate`, `images.edit` (multipart), `models.list`, and its
own exception classes from this service's errors. The layer shares the native API's queue,
work budget, auth, rate limit and request ids."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from harness.servers import Server
from tests.conftest import API_KEY, AUTH
from tests.test_edits import INSIDE, MASK, PICTURE

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(compat_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{compat_server.url}/v1", api_key=API_KEY, max_retries=0)


def png(data: str | bytes) -> Image.Image:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return Image.open(io.BytesIO(raw))


def native_images(server: Server, **fields: object) -> list[str]:
    response = httpx.post(
        f"{server.url}/generate/images",
        json={"prompt": "a red circle", **fields},
        headers=AUTH,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return [image["data"] for image in response.json()["images"]]


def test_generate_answers_in_openai_s_shape_with_the_native_images(
    client: openai.OpenAI, compat_server: Server
) -> None:
    made = client.images.generate(
        model="sd-tiny", prompt="a red circle", n=2, size="64x64", extra_body={"seed": 5}
    )
    assert made.created > 0 and len(made.data) == 2
    assert all(item.revised_prompt == "a red circle" for item in made.data)
    assert made.size == "64x64" and made.output_format == "png"
    native = native_images(compat_server, seed=5, num_images=2, width=64, height=64)
    assert [item.b64_json for item in made.data] == native  # the same generation, byte for byte


def test_size_auto_and_output_format_are_mapped(client: openai.OpenAI) -> None:
    made = client.images.generate(
        prompt="a cat", size="auto", output_format="webp", output_compression=80
    )
    image = png(made.data[0].b64_json or "")
    assert (image.format, image.size) == ("WEBP", (64, 64))  # sd-tiny's native size


def test_urls_are_signed_links_that_download_without_a_key(
    client: openai.OpenAI, compat_server: Server
) -> None:
    made = client.images.generate(prompt="a cat", n=2, response_format="url")
    urls = [item.url or "" for item in made.data]
    assert all(url.startswith(f"{compat_server.url}/v1/files/") for url in urls)
    assert all(httpx.URL(url).path.endswith(".png") for url in urls)  # clients name files so
    fetched = [httpx.get(url) for url in urls]  # no key: the link is the credential
    assert all(r.status_code == 200 and r.headers["content-type"] == "image/png" for r in fetched)
    assert fetched[0].content != fetched[1].content
    forged = urls[0].replace("/0.png", "/1.png")
    expired = re.sub(r"expires=[0-9]+", "expires=1", urls[0])
    job_id = httpx.URL(urls[0]).path.split("/")[3]
    unknown = urls[0].replace(job_id, "0" * len(job_id))  # no job: as forbidden, not a 404
    for bad in (forged, expired, urls[0][:-4] + "0000", unknown):
        assert httpx.get(bad).status_code == 403, bad
    # Every other path of the job still needs the key.
    assert httpx.get(f"{compat_server.url}/jobs/{job_id}").status_code == 401
    assert httpx.get(f"{compat_server.url}/jobs/{job_id}/result?image=0").status_code == 401


def test_edit_inpaints_where_the_mask_is_transparent(client: openai.OpenAI) -> None:
    # OpenAI's masks: transparent = edit, opaque = keep (the native mask, white = repaint).
    alpha = MASK.point(lambda value: 0 if value else 255)
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    mask.putalpha(alpha)
    files = {name: io.BytesIO() for name in ("image", "mask")}
    PICTURE.save(files["image"], format="PNG")
    mask.save(files["mask"], format="PNG")
    made = client.images.edit(
        image=("picture.png", files["image"].getvalue(), "image/png"),
        mask=("mask.png", files["mask"].getvalue(), "image/png"),
        prompt="a green square",
        extra_body={"seed": 3},
    )
    edited = np.asarray(png(made.data[0].b64_json or "").convert("RGB"), dtype=int)
    original = np.asarray(PICTURE, dtype=int)
    assert np.array_equal(edited[~INSIDE], original[~INSIDE])
    assert not np.array_equal(edited[INSIDE], original[INSIDE])


def test_an_edit_without_a_mask_redraws_the_whole_image(client: openai.OpenAI) -> None:
    buffer = io.BytesIO()
    PICTURE.save(buffer, format="PNG")
    made = client.images.edit(image=("p.png", buffer.getvalue(), "image/png"), prompt="a cat")
    assert png(made.data[0].b64_json or "").size == PICTURE.size


@pytest.mark.parametrize(
    ("call", "param"),
    [
        ({"prompt": "a cat", "size": "65x64"}, "size"),
        ({"prompt": "a cat", "n": 9}, "n"),
        ({"prompt": "a cat", "model": "midjourney-v6"}, "model"),
        ({"prompt": "a cat", "background": "transparent"}, "background"),
        ({"prompt": "a cat", "extra_body": {"stepz": 3}}, "stepz"),
    ],
)
def test_bad_input_raises_the_sdk_s_bad_request_error_naming_the_param(
    client: openai.OpenAI, call: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(**call)  # type: ignore[arg-type]
    assert caught.value.param == param, caught.value.body
    assert caught.value.type == "invalid_request_error"
    assert isinstance(caught.value.message, str) and caught.value.message


def test_an_edit_with_a_file_that_is_no_image_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("x.png", b"not an image", "image/png"), prompt="a cat")
    assert caught.value.param == "image"


def test_a_wrong_key_raises_authentication_error(compat_server: Server) -> None:
    stranger = openai.OpenAI(base_url=f"{compat_server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        stranger.images.generate(prompt="a cat")
    assert caught.value.code == "invalid_api_key"


def test_the_native_work_budget_applies(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a cat", n=8, size="512x512", quality="high")
    assert "work" in caught.value.message


def test_models_lists_the_loaded_models(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["sd-tiny"]


def test_answers_carry_the_native_request_id(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(prompt="a cat", size="64x64")
    assert len(raw.headers["x-request-id"]) == 32
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a cat", size="1x1")
    # The SDK reads X-Request-ID; the body carries the same id, as native errors do.
    assert caught.value.request_id == caught.value.response.json()["request_id"]


def test_only_the_edit_route_takes_a_form(compat_server: Server, tmp_path: Path) -> None:
    form = {"prompt": (None, "a cat")}
    for path in ("/v1/images/generations", "/generate/image", "/jobs"):
        refused = httpx.post(f"{compat_server.url}{path}", files=form, headers=AUTH)
        assert refused.status_code == 415, (path, refused.text)
    cross_site = httpx.post(
        f"{compat_server.url}/v1/images/edits",
        files=form,
        headers={**AUTH, "Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403


def test_the_rate_limit_raises_rate_limit_error(open_server: Server) -> None:
    """The server with auth off and 3 requests a minute per address (its window may be
    partly spent by earlier tests: the fourth request is over it either way)."""
    anyone = openai.OpenAI(base_url=f"{open_server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(4):
            anyone.models.list()
    assert caught.value.code == "rate_limit_exceeded"
