"""Swagger UI at ``/docs`` and the OpenAPI spec at ``/docs.json``, with nothing fetched from
outside the server.

BentoML's own index page pulls a Google Tag Manager script and its spec's description embeds
badge images from shields.io; this page uses only the Swagger assets BentoML ships, and the
spec is BentoML's with this service's own title and description.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

API_DESCRIPTION = """Text-to-image generation with a diffusers pipeline loaded once per process.

`POST /generate/image` answers the image bytes, with the seed used in `X-Seed` and the model in
`X-Model`. `GET /models` lists the loaded models, their defaults and accepted schedulers.
Errors are JSON: `error`, and `detail` naming each offending field."""

# Assets are served by BentoML under /static_content.
SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Image generation API</title>
  <link rel="stylesheet" href="/static_content/swagger-ui.css">
  <link rel="icon" type="image/png" href="/static_content/favicon-light-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/static_content/swagger-ui-bundle.js"></script>
  <script src="/static_content/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/docs.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
    });
  </script>
</body>
</html>
"""


SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def docs_router(service: Any, *, auth: bool) -> APIRouter:
    """Routes for ``/``, ``/docs`` and ``/docs.json`` of a BentoML ``service``; with ``auth``
    the spec declares the API-key schemes, which gives Swagger UI its Authorize button."""
    router = APIRouter(include_in_schema=False)

    @cache
    def spec() -> dict[str, Any]:
        document: dict[str, Any] = service.openapi_spec.asdict()
        document["info"] = {
            "title": document["info"]["title"],
            "description": API_DESCRIPTION,
            "version": service.bento.tag.version if service.bento else "dev",
        }
        if auth:
            document["components"]["securitySchemes"] = SECURITY_SCHEMES
            document["security"] = [{name: []} for name in SECURITY_SCHEMES]
        return document

    @router.get("/docs.json")
    def openapi_spec() -> dict[str, Any]:
        return spec()

    @router.get("/docs", response_class=HTMLResponse)
    def swagger_ui() -> str:
        return SWAGGER_PAGE

    @router.get("/")
    def index() -> RedirectResponse:
        return RedirectResponse("/docs")

    return router
