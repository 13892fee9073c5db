"""Swagger UI at /docs in a real headless Chromium, with no network beyond the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from harness.servers import Server
from imagegen import __version__
from tests.conftest import API_KEY, requests_outside

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture
def docs_page(browser: Browser, server: Server) -> Iterator[tuple[Page, list[str]]]:
    """/docs loaded, with every request that left the server recorded; the page breaks no
    rule of its Content-Security-Policy."""
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    outside = requests_outside(page, server.url)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    response = page.goto(f"{server.url}/docs", wait_until="networkidle")
    assert response is not None
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    yield page, outside
    assert [line for line in console if "Content Security Policy" in line] == []
    page.close()


def test_docs_show_the_generate_operation_with_its_example(
    docs_page: tuple[Page, list[str]], artifacts: Path
) -> None:
    page, outside = docs_page
    operation = page.locator('.opblock-summary-path[data-path="/generate/image"]')
    operation.wait_for(timeout=15_000)
    operation.click()
    example = page.locator(".opblock-body .body-param__example, .opblock-body .microlight")
    example.first.wait_for(timeout=15_000)
    page.screenshot(path=str(artifacts / "docs.png"), full_page=True)
    assert "lighthouse on a cliff" in example.first.inner_text()
    assert page.locator('.opblock-summary-path[data-path="/models"]').count() == 1
    assert outside == []


def test_docs_read_as_the_readme_does(docs_page: tuple[Page, list[str]]) -> None:
    """A summary beside each operation, the schema names users know, the package's version,
    and no server named "."."""
    page, _ = docs_page
    for path, summary in [
        ("/generate/image", "Generate one image"),
        ("/generate/images", "Generate num_images images, base64 in JSON, as one batch"),
        ("/models", "The loaded models"),
    ]:
        operation = page.locator(f'.opblock:has(.opblock-summary-path[data-path="{path}"])')
        description = operation.locator(".opblock-summary-description").first
        description.wait_for(timeout=15_000)
        assert description.inner_text().startswith(summary)
    assert page.locator(".info .version").first.inner_text().strip() == __version__
    # OpenAPI 3.1's schema list reads "ImageRequestExpand allobject" per line.
    schemas = page.locator("section.models").inner_text().splitlines()
    names = {line.split("Expand")[0] for line in schemas}
    assert {"ImageRequest", "ImagesResponse", "ErrorBody"} <= names
    assert "IODescriptor" not in page.content()
    assert page.locator(".servers").count() == 0


def test_authorize_button_makes_try_it_out_work(
    docs_page: tuple[Page, list[str]], artifacts: Path
) -> None:
    page, outside = docs_page
    page.locator("button.authorize").first.click()
    dialog = page.locator(".modal-ux")
    dialog.locator("input").first.fill(API_KEY)
    dialog.locator("button.authorize").first.click()
    dialog.locator("button.btn-done").first.click()

    page.locator('.opblock-summary-path[data-path="/generate/image"]').click()
    page.locator("button.try-out__btn").click()
    page.locator("button.execute").click()
    status = page.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=30_000)
    page.screenshot(path=str(artifacts / "docs-try-it-out.png"), full_page=True)
    assert status.inner_text().strip() == "200"
    assert outside == []
    # The key lives in this tab's sessionStorage: a reload keeps it, localStorage never has it.
    assert page.evaluate("localStorage.length") == 0
    page.reload(wait_until="networkidle")
    page.locator("button.authorize").first.click()
    assert page.locator(".modal-ux .auth-container").first.inner_text().count("Authorized") >= 1
