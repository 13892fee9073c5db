"""BentoML APIs answered as their requests leave the middleware stack, ahead of BentoML's own
API handling: a share of the fixed cost of every generation request.

Between the last middleware and a handler BentoML runs its request context, its router, its
IO descriptor, its response wrapper and a dependency-injected header: 0.35 to 1.0 ms a
request on cpu-2 (docs/benchmarks.md). This route does what of that the APIs need, as BentoML
does it: the body parsed by the API's own input model (the same validators, so the same
errors), a schema violation answered with BentoML's 400 body, a failure logged and answered
with its 500, the handler called with the request in BentoML's context
(`bentoml.Context().request`). The APIs stay declared with BentoML, which documents them
(OpenAPI) and serves every request this route passes on: another method or media type, and
all of them while BentoML's CORS is on (its middleware, between this one and the routes,
must add its headers).
"""

from __future__ import annotations

import logging
from typing import Any

import bentoml
from _bentoml_impl.serde import JSONSerde
from _bentoml_sdk.method import APIMethod
from bentoml import get_current_service
from bentoml._internal.container import BentoMLContainer
from bentoml.exceptions import BentoMLException
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.logs import is_client_error
from middleware.content_type import JSON_MEDIA_TYPE

logger = logging.getLogger(__name__)

UNEXPECTED = "An unexpected error has occurred, please check the server log."


def bentoml_error(error: Exception) -> JSONResponse:
    """The answer BentoML's API wrapper gives for ``error``, raised while a request is read
    or handled (``_bentoml_impl.server.app.ServiceAppFactory.api_endpoint_wrapper``), logged
    with its traceback as BentoML does, unless the client caused it (the access line says
    so), as the service's log filter has BentoML's lines (app/logs.py)."""
    if not is_client_error(error):
        logger.error("an API's handler failed", exc_info=error)
    if isinstance(error, ValidationError):
        data: Any = {
            "error": f"{error.error_count()} validation error for {error.title}",
            "detail": error.errors(include_context=False, include_input=False),
        }
        return JSONResponse(data, status_code=400)
    status = error.error_code.value if isinstance(error, BentoMLException) else 500
    if status >= 500:
        return JSONResponse({"error": UNEXPECTED}, status_code=status)
    data = {"error": "Authorization error"} if status in (401, 403) else [{"error": str(error)}]
    return JSONResponse(data, status_code=status)


class DirectRoute:
    def __init__(self, app: ASGIApp, *, service: bentoml.Service[Any], apis: list[str]) -> None:
        """``apis``: names of async APIs of ``service`` that take a JSON body and no context
        parameter, and are neither batched (BentoML's dispatcher batches those) nor streamed."""
        self.app = app
        self.routes: dict[str, APIMethod[..., Any]] = {}
        for name in apis:
            method = service.apis.get(name)
            if method is None:
                raise ValueError(f"`apis` must name APIs of {service.name}, but has {name!r}")
            if method.batchable or method.ctx_param is not None or method.is_stream:
                raise ValueError(f"`apis` must not be batched, streamed or given ctx: {name}")
            self.routes[method.route] = method
        # BentoML's own routes of these APIs, found in its app on the first request.
        self.bentoml_routes: dict[str, Route] | None = None
        self.context = service.context
        self.server = f"BentoML Service/{service.name}"
        # BentoML's CORS middleware runs between this one and the routes, adding its headers.
        self.on = not BentoMLContainer.http.cors.enabled.get()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        # What BentoML's router would leave in the scope: the request metrics label by it.
        scope.update(route=route, endpoint=route.endpoint, path_params={})
        response = await self._answer(self.routes[route.path], Request(scope, receive))
        response.headers["Server"] = self.server
        await response(scope, receive, send)

    def _route(self, scope: Scope) -> Route | None:
        """BentoML's route of the API a JSON POST is for; None for any other request."""
        if not (
            self.on
            and scope["type"] == "http"
            and scope["path"] in self.routes
            and scope["method"] == "POST"
        ):
            return None
        media_type = Headers(scope=scope).get("content-type", JSON_MEDIA_TYPE)
        if media_type.split(";")[0].strip() != JSON_MEDIA_TYPE:
            return None
        if self.bentoml_routes is None:
            self.bentoml_routes = {
                r.path: r
                for r in scope["app"].routes
                if isinstance(r, Route) and r.path in self.routes
            }
        return self.bentoml_routes.get(scope["path"])

    async def _answer(self, method: APIMethod[..., Any], request: Request) -> Response:
        try:
            body = method.input_spec.model_validate_json(await request.body() or b"{}")
            fields = {name: getattr(body, name) for name in method.input_spec.model_fields}
            with self.context.in_request(request):
                output = await method.func(get_current_service(), **fields)
            if isinstance(output, Response):
                return output
            return await method.output_spec.to_http_response(output, JSONSerde())
        except Exception as error:
            return bentoml_error(error)
