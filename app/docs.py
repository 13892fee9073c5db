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
from fastapi.responses import HTMLResponse, Response

from imagegen import __version__
from imagegen.schemas import ErrorBody
from middleware.error_body import RETRY_STATUSES

API_DESCRIPTION = """Text-to-image, image-to-image and inpainting with a diffusers pipeline
loaded once per process.

`POST /generate/image` answers the image bytes (give `image`, base64, to start from it, and
`mask` to repaint only its white part), with the seed used in `X-Seed` and the model in
`X-Model`; `POST /generate/images` answers several images as base64 in JSON; `hires` on
either draws again at a larger size (hires fix). `POST /upscale` enlarges an image with an
upscaler. `GET /models` lists the loaded models, their defaults, accepted schedulers and
upscalers; `GET /upscalers` describes the upscalers. Request bodies are JSON
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
    "limits, a webhook the server will not call, a bad `Last-Event-ID`, or malformed JSON.",
    401: "A missing or wrong API key.",
    403: "A state-changing request from a web origin not in `IMAGEGEN_ALLOWED_ORIGINS`, or a "
    "signed link that is wrong or expired.",
    404: "No such job, or another API key's job.",
    408: "The body did not arrive within `IMAGEGEN_BODY_TIMEOUT_S`.",
    409: "The job has not succeeded (a result), or has already ended (a cancel).",
    410: "The job's result has expired (`IMAGEGEN_JOB_TTL`).",
    413: "The body is larger than `IMAGEGEN_MAX_BODY_BYTES`.",
    415: "The body is not `application/json`.",
    422: "AUTOMATIC1111's API and its ControlNet extension's (which answer 422 where the "
    "native API answers 400): a field that breaks its rule, or that asks for a feature this "
    "service does not have.",
    429: "Too many requests in flight (in total or for this key), or over a rate limit: retry "
    "after `Retry-After`.",
    500: "The generation failed; the server log has the details, under the request id.",
    503: "The queue's estimated wait is past its bound, out of accelerator memory, the job store "
    "is full or unreachable, or the model is still loading: retry after `Retry-After`.",
    504: "The request took longer than `IMAGEGEN_TIMEOUT`; its generation was cancelled.",
}
# Every route but the probes passes auth, the limits and the timeout; a request with a
# body its checks too; then each path its own.
EVERY_ROUTE = (401, 429, 500, 504)
WITH_BODY = (400, 403, 408, 413, 415)
PROBES = frozenset({"/healthz", "/livez", "/readyz"})
BY_PATH: dict[str, tuple[int, ...]] = {
    "/generate/": (503,),
    "/upscale": (503,),
    "/v1/images/": (503,),
    "/sdapi/v1/": (400, 422, 503),
    "/controlnet/": (422,),
    "/jobs": (400, 404, 409, 410, 503),
    "/v1/files/": (400, 403, 409, 410, 503),
}

# Assets are served by BentoML under /static_content; the page's own script is /docs.js, so
# the policy allows no inline script (Swagger UI sets inline styles, hence 'unsafe-inline'
# for styles alone).
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
  <script src="/docs.js"></script>
</body>
</html>
"""
# The key typed into Authorize is kept in this tab's sessionStorage (Swagger UI's own
# `persistAuthorization` would keep it in localStorage, for every later visitor of the
# browser profile), so a reload keeps it and closing the tab forgets it.
SWAGGER_SCRIPT = """"use strict";
const SAVED = "imagegen-docs-auth";
const saved = () => JSON.parse(sessionStorage.getItem(SAVED) || "{}");
const SessionAuthorization = () => ({
  statePlugins: {
    auth: {
      wrapActions: {
        authorize: (action) => (payload) => {
          sessionStorage.setItem(SAVED, JSON.stringify({ ...saved(), ...payload }));
          return action(payload);
        },
        logout: (action) => (names) => {
          const kept = saved();
          for (const name of names) delete kept[name];
          sessionStorage.setItem(SAVED, JSON.stringify(kept));
          return action(names);
        },
      },
    },
  },
});
window.ui = SwaggerUIBundle({
  url: "/docs.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  plugins: [SessionAuthorization],
  layout: "StandaloneLayout",
  onComplete: () => {
    const kept = saved();
    if (Object.keys(kept).length) window.ui.authActions.authorize(kept);
  },
});
"""
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


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
    if path in PROBES:
        return None
    if path == "/metrics":
        return (401,)  # without the metrics key
    statuses = {*EVERY_ROUTE, *(WITH_BODY if method != "get" else ())}
    for prefix, more in BY_PATH.items():
        if path.startswith(prefix):
            statuses.update(more)
    return tuple(sorted(statuses))


def documented(document: dict[str, Any], *, auth: bool) -> dict[str, Any]:
    """BentoML's spec with this service's title, version, error answers and schema names."""
    document = renamed_schemas(document)
    # pydantic writes JSON Schema 2020-12 (a numeric `exclusiveMinimum`, `anyOf` with null):
    # OpenAPI 3.1's dialect, not the 3.0.2 BentoML declares.
    document["openapi"] = "3.1.0"
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
                continue  # the probes, documented as BentoML has them
            statuses = tuple(status for status in answered if auth or status != 401)
            # Swagger shows summaries as plain text, so without markdown's backticks; the
            # first sentence ends at a full stop followed by a space (not `links.events`).
            if "description" in operation:
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
    def swagger_ui() -> HTMLResponse:
        return HTMLResponse(SWAGGER_PAGE, headers={"Content-Security-Policy": DOCS_POLICY})

    @router.get("/docs.js")
    def swagger_script() -> Response:
        return Response(SWAGGER_SCRIPT, media_type="text/javascript")

    return router
