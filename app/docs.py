"""Swagger UI at ``/docs`` and the OpenAPI spec at ``/docs.json``, with nothing fetched from
outside the server.

BentoML's own index page pulls a Google Tag Manager script and its spec's description embeds
badge images from shields.io; this page uses only the Swagger assets BentoML ships, and the
spec is BentoML's with this service's own title and description.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from imagegen import __version__
from imagegen.schemas import ErrorBody
from middleware.error_body import RETRY_STATUSES

API_DESCRIPTION = """Text-to-image, image-to-image and inpainting with a diffusers pipeline
loaded once per process.

`POST /generate/image` answers the image bytes (give `image`, base64, to start from it, and
`mask` to repaint only its white part), with the seed used in `X-Seed` and the model in
`X-Model`; `POST /generate/images` answers several images as base64 in JSON. `GET /models`
lists the loaded models, their defaults and accepted schedulers. Request bodies are JSON
(`Content-Type: application/json`). Every error is a JSON object: an `error` sentence naming
the field, the rule and the value, the `request_id`, and for schema violations `detail`, one
entry per broken rule."""

SCHEMAS = "#/components/schemas/"
# BentoML's own error schemas, replaced by ErrorBody, the shape every error really has.
BENTOML_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")
# FastAPI's 422 schemas: its routes answer schema violations 400 with ErrorBody instead.
FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
# What each status means on the generation endpoints; GETs answer only some of them.
ERROR_STATUSES: dict[int, str] = {
    400: "A field breaks its rule, an unknown field, a scheduler or model the server does not "
    "have, a prompt longer than the text encoder reads, more work than one request may ask "
    "for, an `image` or `mask` that is not a readable PNG, JPEG or WebP within the size "
    "limits, a webhook the server will not call, or malformed JSON.",
    401: "A missing or wrong API key.",
    404: "No such job, or another API key's job.",
    409: "The job has not succeeded (a result), or has already ended (a cancel).",
    410: "The job's result has expired (`IMAGEGEN_JOB_TTL`).",
    413: "The body is larger than `IMAGEGEN_MAX_BODY_BYTES`.",
    415: "The body is not `application/json`.",
    429: "Too many requests in flight, or over a rate limit: retry after `Retry-After`.",
    500: "The generation failed; the server log has the details, under the request id.",
    503: "The queue's estimated wait is past its bound, out of accelerator memory, the job store "
    "is full or unreachable, or the model is still loading: retry after `Retry-After`.",
    504: "The request took longer than `IMAGEGEN_TIMEOUT`; its generation was cancelled.",
}
POST_ERROR_STATUSES = (400, 401, 413, 415, 429, 500, 503, 504)
GET_ERROR_STATUSES = (401, 429, 500, 504)
JOB_ERROR_STATUSES = {
    "get": (401, 404, 410, 429, 500, 503, 504),
    "delete": (401, 404, 409, 410, 429, 500, 503, 504),
}

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


def renamed_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """BentoML names request and response schemas ``<Model>IODescriptor``, as keys, references
    and titles; users know them as ``<Model>``."""
    renamed: dict[str, Any] = json.loads(json.dumps(document).replace('IODescriptor"', '"'))
    return renamed


def error_responses(statuses: tuple[int, ...]) -> dict[str, Any]:
    body = {"application/json": {"schema": {"$ref": f"{SCHEMAS}ErrorBody"}}}
    return {
        str(status): {
            "description": ERROR_STATUSES[status],
            "content": body,
            **({"headers": RETRY_AFTER} if status in RETRY_STATUSES else {}),
        }
        for status in statuses
    }


def error_statuses(path: str, method: str) -> tuple[int, ...] | None:
    """The error statuses an operation can answer; None for BentoML's own routes."""
    if method == "post":
        return POST_ERROR_STATUSES
    if path == "/models":
        return GET_ERROR_STATUSES
    if path.startswith("/jobs/"):
        statuses = JOB_ERROR_STATUSES[method]
        return tuple(sorted({*statuses, 409})) if path.endswith("/result") else statuses
    return None


def documented(document: dict[str, Any], *, auth: bool) -> dict[str, Any]:
    """BentoML's spec with this service's title, version, error answers and schema names."""
    document = renamed_schemas(document)
    document["info"] = {"title": "imagegen", "description": API_DESCRIPTION, "version": __version__}
    document.pop("servers", None)  # BentoML's "." reads as a server named "."; none means this one
    schemas = document["components"]["schemas"]
    for name in (*BENTOML_ERROR_SCHEMAS, *FASTAPI_ERROR_SCHEMAS, "TaskStatusResponse"):
        schemas.pop(name, None)
    error_schema = ErrorBody.model_json_schema(ref_template=SCHEMAS + "{model}")
    schemas.update(error_schema.pop("$defs"), ErrorBody=error_schema)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            answered = error_statuses(path, method)
            if answered is None:
                continue  # BentoML's probes and metrics, documented as BentoML has them
            statuses = tuple(status for status in answered if auth or status != 401)
            # Swagger shows summaries as plain text, so without markdown's backticks; the
            # first sentence ends at a full stop followed by a space (not `links.events`).
            summary = " ".join(operation["description"].split()).split(". ")[0].rstrip(".")
            operation["summary"] = summary.replace("`", "")
            kept = {k: v for k, v in operation["responses"].items() if int(k) < 400}
            operation["responses"] = {**kept, **error_responses(statuses)}
    if auth:
        document["components"]["securitySchemes"] = SECURITY_SCHEMES
        document["security"] = [{name: []} for name in SECURITY_SCHEMES]
    return document


def docs_router(service: Any, *, auth: bool) -> APIRouter:
    """Routes for ``/docs`` and ``/docs.json`` of a BentoML ``service``; with ``auth``
    the spec declares the API-key schemes, which gives Swagger UI its Authorize button."""
    router = APIRouter(include_in_schema=False)

    @cache
    def spec() -> dict[str, Any]:
        return documented(service.openapi_spec.asdict(), auth=auth)

    @router.get("/docs.json")
    def openapi_spec() -> dict[str, Any]:
        return spec()

    @router.get("/docs", response_class=HTMLResponse)
    def swagger_ui() -> str:
        return SWAGGER_PAGE

    return router
