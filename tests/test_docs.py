"""The README is a front door and `docs/` the manual: short, linked, generated where it can be."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imagegen.settings import reference

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A Markdown link or image, outside code: [text](target) with no scheme in the target.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file or heading does not exist."""
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # a URL: not this repository's to check
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and anchor not in anchors(linked)):
            broken.append(target)
    return broken


def test_the_readme_is_a_front_door() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in ("api", "jobs", "compatibility", "configuration", "models", "architecture"):
        assert f"docs/{page}.md" in readme


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_sees_a_missing_page_and_a_missing_heading(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# The `Other` page\n")
    page.write_text(
        "# Top\n\n[ok](#top) [ok](other.md#the-other-page) [gone](missing.md) "
        "[no heading](other.md#nowhere) [web](https://example.com/x.md)\n"
        "```\n[in code](ignored.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md", "other.md#nowhere"]


def test_the_configuration_page_is_generated_from_settings() -> None:
    """Regenerate with `python -m imagegen.settings > docs/configuration.md`."""
    assert (REPO / "docs" / "configuration.md").read_text() == reference()


def test_the_configuration_page_lists_every_setting() -> None:
    page = reference()
    for name in ("IMAGEGEN_MODEL", "IMAGEGEN_REDIS_URL", "IMAGEGEN_WEBHOOK_SECRET"):
        assert f"| `{name}` |" in page
    assert "| `IMAGEGEN_DTYPE` | `auto` | `auto`, `float32`, `float16`, `bfloat16` |" in page
    assert "| `IMAGEGEN_MAX_BATCH_SIZE` | `8` | integer, ≥ 1, ≤ 64 |" in page
