"""Swagger UI at ``/docs`` from the assets BentoML ships, so it works with no network access.

BentoML's own index page pulls a Google Tag Manager script; this page loads nothing from
outside the server, and ``/`` redirects here.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

router = APIRouter(include_in_schema=False)

# Assets are served by BentoML under /static_content; the spec is BentoML's /docs.json.
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


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui() -> str:
    return SWAGGER_PAGE


@router.get("/")
def index() -> RedirectResponse:
    return RedirectResponse("/docs")
