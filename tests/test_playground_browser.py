"""The playground at `/` in Debian's headless Chromium against a real server serving the demo
model, auth on: generate and watch it draw, cancel, the key, field errors, phone width. Each
state is saved as a screenshot in the test artifacts; a request outside the server fails."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page

from bench.controls import iou
from harness.servers import Server
from models.shapes import Scene, measure, nearest_colour, silhouette
from tests.conftest import API_KEY, requests_outside
from tests.test_jobs_e2e import job_when

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

WAIT_MS = 60_000
# Seed 3 draws this prompt's circle over the image's centre (sd-shapes places shapes anywhere).
PROMPT, SEED = "a red circle on a blue background", 3


@pytest.fixture
def playground(browser: Browser, shapes_server: Server) -> Iterator[tuple[Page, list[str]]]:
    """`/` loaded in a fresh browser context (its own storage), no key entered yet."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    outside = requests_outside(page, shapes_server.url)
    page.goto(f"{shapes_server.url}/", wait_until="networkidle")
    page.wait_for_selector("body[data-ready=true]")
    yield page, outside
    assert outside == []
    context.close()


def enter_key(page: Page) -> None:
    page.fill("#api_key", API_KEY)
    page.press("#api_key", "Tab")  # `change` fires as the field loses focus
    page.wait_for_selector("#model option[value=sd-shapes]", state="attached")


def fix_seed(page: Page, seed: int) -> None:
    page.uncheck("#random_seed")
    page.fill("#seed", str(seed))


def watch_progress(page: Page) -> None:
    """Record every change of the progress bar (its value and the events counted) and every
    status line shown."""
    page.evaluate(
        """() => {
          const bar = document.getElementById("progress");
          const status = document.getElementById("status");
          window.seen = [];
          window.said = [];
          new MutationObserver(() => window.seen.push([bar.value, bar.dataset.events]))
            .observe(bar, {attributes: true});
          new MutationObserver(() => window.said.push(status.textContent))
            .observe(status, {childList: true, characterData: true, subtree: true});
        }"""
    )


def shown_image(page: Page, selector: str) -> Image.Image:
    """The pixels of an <img> of the page, as the browser decoded them."""
    width, height, rgba = page.evaluate(
        """(selector) => {
          const image = document.querySelector(selector);
          const canvas = document.createElement("canvas");
          canvas.width = image.naturalWidth;
          canvas.height = image.naturalHeight;
          const context = canvas.getContext("2d");
          context.drawImage(image, 0, 0);
          const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
          return [canvas.width, canvas.height, Array.from(pixels)];
        }""",
        selector,
    )
    return Image.frombytes("RGBA", (width, height), bytes(rgba)).convert("RGB")


def test_a_prompt_is_drawn_with_progress_then_kept_in_the_gallery(
    playground: tuple[Page, list[str]], artifacts: Path
) -> None:
    page, _ = playground
    page.screenshot(path=str(artifacts / "playground-start.png"), full_page=True)
    enter_key(page)
    page.fill("#prompt", PROMPT)
    fix_seed(page, SEED)
    watch_progress(page)
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#results img", timeout=WAIT_MS)
    page.screenshot(path=str(artifacts / "playground-done.png"), full_page=True)

    seen = page.evaluate("window.seen")
    fractions = [value for value, _ in seen]
    assert any(0 < value < 1 for value in fractions), seen  # it moved through the steps
    assert fractions == sorted(fractions)
    assert int(page.get_attribute("#progress", "data-events") or 0) >= 10
    said = page.evaluate("window.said")
    assert any(line.startswith("Queued: ") and "ahead" in line for line in said), said
    assert any(line.startswith("Step ") and "s left" in line for line in said), said  # ETA
    assert page.input_value("#seed") == str(SEED)

    image = shown_image(page, "#results img")
    reading = measure(image)
    assert (reading.colour, reading.shape, reading.background) == ("red", "circle", "blue")
    centre = image.getpixel((image.width // 2, image.height // 2))
    assert nearest_colour(centre) == "red"  # type: ignore[arg-type]

    assert page.locator("#gallery figure").count() == 1
    download = page.locator("#gallery figure a").first
    assert download.get_attribute("download") == f"imagegen-{SEED}.png"
    page.reload(wait_until="networkidle")  # kept in the browser, not the page
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#gallery figure").count() == 1
    page.fill("#prompt", "")
    page.locator("#gallery img").first.click()  # reuse its parameters
    assert page.input_value("#prompt") == PROMPT
    assert page.input_value("#seed") == str(SEED)
    page.screenshot(path=str(artifacts / "playground-gallery.png"), full_page=True)


def test_the_png_downloaded_keeps_its_parameters(playground: tuple[Page, list[str]]) -> None:
    page, _ = playground
    enter_key(page)
    page.fill("#prompt", PROMPT)
    fix_seed(page, 7)
    page.click("#generate")
    page.wait_for_selector("#results img", timeout=WAIT_MS)
    with page.expect_download() as download:
        page.locator("#results figure a").first.click()
    saved = Image.open(download.value.path())
    assert '"seed":7' in saved.info["parameters"]  # type: ignore[operator]


def test_schedule_and_clip_skip_reach_the_image(playground: tuple[Page, list[str]]) -> None:
    page, _ = playground
    enter_key(page)
    page.fill("#prompt", PROMPT)
    fix_seed(page, 7)
    page.select_option("#scheduler", "dpm++")
    page.select_option("#schedule", "karras")
    page.fill("#clip_skip", "2")
    page.click("#generate")
    page.wait_for_selector("#results img", timeout=WAIT_MS)
    with page.expect_download() as download:
        page.locator("#results figure a").first.click()
    drawn = json.loads(Image.open(download.value.path()).info["parameters"])  # type: ignore[arg-type]
    assert (drawn["scheduler"], drawn["schedule"], drawn["clip_skip"]) == ("dpm++", "karras", 2)


def test_hires_fix_draws_twice_the_size_and_says_which_pass(
    playground: tuple[Page, list[str]], artifacts: Path
) -> None:
    page, _ = playground
    enter_key(page)
    page.fill("#prompt", PROMPT)
    fix_seed(page, SEED)
    page.click("#hires-fix summary")
    page.check("#hires")
    assert page.input_value("#hires\\.upscaler") == "Latent"  # the model's first latent one
    watch_progress(page)
    page.click("#generate")
    page.wait_for_selector("#results img", timeout=WAIT_MS)
    page.screenshot(path=str(artifacts / "playground-hires.png"), full_page=True)
    said = page.evaluate("window.said")
    assert any("(hires fix, second pass)" in line for line in said), said
    image = shown_image(page, "#results img")
    assert image.size == (128, 128)
    assert "128\u00d7128 (hires fix from 64\u00d764)" in page.inner_text("#results figcaption")
    reading = measure(image)
    assert (reading.colour, reading.shape, reading.background) == ("red", "circle", "blue")
    # Its parameters back from the gallery: the second pass's settings too.
    page.uncheck("#hires")
    page.locator("#gallery img").first.click()
    assert page.is_checked("#hires")
    assert page.input_value("#hires\\.scale") == "2"
    assert page.input_value("#hires\\.strength") == "0.7"
    # A second pass of no steps is refused beside its field.
    page.fill("#hires\\.strength", "0.01")
    page.click("#generate")
    error = page.locator("#error-hires\\.strength")
    error.wait_for(timeout=WAIT_MS)
    assert error.inner_text().startswith("`hires.strength` x its steps must be at least 1")


def ask_for_a_long_generation(page: Page) -> None:
    """Fill the form for 150 steps at 128x128: seconds of work, long enough to stop."""
    enter_key(page)
    page.fill("#prompt", PROMPT)
    page.fill("#num_inference_steps", "150")
    page.fill("#width", "128")
    page.fill("#height", "128")


def test_a_long_generation_is_cancelled_and_the_server_is_free_after(
    playground: tuple[Page, list[str]], artifacts: Path
) -> None:
    page, _ = playground
    ask_for_a_long_generation(page)
    page.click("#generate")
    deadline = time.monotonic() + WAIT_MS / 1000
    while int(page.get_attribute("#progress", "data-events") or 0) < 3:  # a few steps in
        assert time.monotonic() < deadline, "no progress events"
        page.wait_for_timeout(50)
    page.screenshot(path=str(artifacts / "playground-running.png"), full_page=True)
    page.click("#cancel")
    page.wait_for_selector("#status:has-text('Cancelled')", timeout=WAIT_MS)
    page.screenshot(path=str(artifacts / "playground-cancelled.png"), full_page=True)
    assert page.locator("#results img").count() == 0

    for field in ("#num_inference_steps", "#width", "#height"):
        page.fill(field, "")
    page.click("#generate")
    # The cancelled job's remaining 140-odd steps would take longer than this.
    page.wait_for_selector("#results img", timeout=15_000)


def test_leaving_the_page_cancels_its_running_job(
    playground: tuple[Page, list[str]], shapes_server: Server
) -> None:
    page, _ = playground
    ask_for_a_long_generation(page)
    with page.expect_response(lambda response: response.url.endswith("/jobs")) as submitted:
        page.click("#generate")
    job_id = submitted.value.json()["id"]
    page.wait_for_selector("#status:has-text('Step')", timeout=WAIT_MS)
    page.goto("about:blank")
    job = job_when(shapes_server, job_id, lambda job: job["status"] != "running")
    assert job["status"] == "cancelled", job


def test_without_a_key_the_api_sentence_is_shown_beside_the_key_field(
    playground: tuple[Page, list[str]], artifacts: Path
) -> None:
    page, _ = playground
    error = page.locator("#error-api_key")
    assert "API key" in error.inner_text()
    page.screenshot(path=str(artifacts / "playground-no-key.png"), full_page=True)
    enter_key(page)
    assert error.inner_text() == ""
    stored = page.evaluate("[sessionStorage.getItem('imagegen-api-key'), localStorage.length]")
    assert stored == [API_KEY, 0]  # this tab only
    assert API_KEY not in page.url


@pytest.mark.parametrize(
    ("field", "value", "sentence"),
    [
        ("width", "100", "`width` must be a multiple of 8, but is 100."),
        ("prompt", "a red circle " * 30, "`prompt` must be at most 77 tokens"),
    ],
)
def test_a_field_error_is_shown_beside_its_field(
    playground: tuple[Page, list[str]], artifacts: Path, field: str, value: str, sentence: str
) -> None:
    page, _ = playground
    enter_key(page)
    page.fill("#prompt", PROMPT)
    page.fill(f"#{field}", value)
    page.click("#generate")
    error = page.locator(f"#error-{field}")
    error.wait_for(timeout=WAIT_MS)
    assert error.inner_text().startswith(sentence)
    assert page.get_attribute(f"#{field}", "aria-invalid") == "true"
    page.screenshot(path=str(artifacts / f"playground-error-{field}.png"), full_page=True)


def test_every_control_is_labelled_and_the_page_fits_a_phone(
    browser: Browser, shapes_server: Server, artifacts: Path
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    outside = requests_outside(page, shapes_server.url)
    page.goto(f"{shapes_server.url}/", wait_until="networkidle")
    page.wait_for_selector("body[data-ready=true]")
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll("input, select, textarea")]
             .filter((c) => c.labels.length === 0 && !c.getAttribute("aria-label"))
             .map((c) => c.id)"""
    )
    assert unlabelled == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(artifacts / "playground-phone.png"), full_page=True)
    assert page.locator("a[href='/docs']").count() == 1
    assert outside == []
    context.close()


def test_a_control_image_is_previewed_then_guides_the_drawing(
    playground: tuple[Page, list[str]], artifacts: Path, tmp_path: Path
) -> None:
    """The demo model's ControlNet: the silhouette's Canny map is shown before generating, and
    the circle is drawn where the silhouette is (at the right)."""
    page, _ = playground
    scene = Scene("red", "circle", "blue", 28, (46, 32))
    control = tmp_path / "silhouette.png"
    Image.fromarray(silhouette(scene)).save(control)
    enter_key(page)
    page.wait_for_selector("#control:not([hidden])", state="attached")
    page.locator("#control summary").click()
    page.select_option("#control\\.module", "canny")
    page.set_input_files("#control\\.image", str(control))
    page.wait_for_selector("#control-preview:not([hidden])")
    edges = np.asarray(shown_image(page, "#control-preview"))[:, :, 0]
    assert edges[:, 30:].any() and not edges[:, :28].any()  # the outline, at the right
    page.fill("#prompt", scene.caption)
    fix_seed(page, 4)
    page.click("#generate")
    page.wait_for_selector("#results img", timeout=WAIT_MS)
    page.screenshot(path=str(artifacts / "playground-control.png"), full_page=True)
    assert iou(shown_image(page, "#results img"), scene) > 0.5
