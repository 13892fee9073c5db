"""The playground at ``/``: one page and its two files from ``web/``, served as they are.

The page's Content-Security-Policy lets it load and call nothing but this server (images it
makes itself from data: and blob: URLs aside), so a prompt or a server answer shown on it can
never pull in a script, and the page works offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

WEB = Path(__file__).resolve().parent.parent / "web"
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self' data:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def mount_playground(app: FastAPI) -> None:
    """``GET /`` answers the page; ``/web/`` its script and style sheet."""

    # The page under its file's name too, with the same policy (the files below get the
    # API's, which would leave it blank).
    @app.get("/", include_in_schema=False)
    @app.get("/web/index.html", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(
            WEB / "index.html",
            headers={"Content-Security-Policy": POLICY, "Cache-Control": "no-cache"},
        )

    app.mount("/web", StaticFiles(directory=WEB), name="web")
