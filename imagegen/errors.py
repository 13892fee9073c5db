"""Errors a request can meet, each with its HTTP answer. Client errors are one short sentence;
server errors never carry a traceback (that goes to the log)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from starlette.responses import JSONResponse

Handler = TypeVar("Handler", bound=Callable[..., Any])


class ServiceError(Exception):
    status_code = 500
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_response(self) -> JSONResponse:
        # Same shape as BentoML's own 400 for schema violations: `error`, plus `detail` with
        # the field's location, so clients parse one format.
        body: dict[str, object] = {"error": self.message}
        if self.field is not None:
            body["detail"] = [{"loc": [self.field], "msg": self.message, "type": "value_error"}]
        return JSONResponse(body, status_code=self.status_code, headers=self.headers)


class InvalidField(ServiceError):
    """A field that passed the schema but does not fit the loaded model."""

    status_code = 400


class OutOfMemory(ServiceError):
    """The accelerator ran out of memory; the caches are freed and a retry may succeed."""

    status_code = 503
    headers: ClassVar[dict[str, str]] = {"Retry-After": "10"}


class Overloaded(ServiceError):
    """More requests wait for the model than it can serve within the configured latency."""

    status_code = 503
    headers: ClassVar[dict[str, str]] = {"Retry-After": "5"}


class GenerationFailed(ServiceError):
    status_code = 500

    def __init__(
        self,
        message: str = "Image generation failed; the server log has the details.",
        *,
        field: str | None = None,
    ) -> None:
        super().__init__(message, field=field)


def answers_errors(handler: Handler) -> Handler:
    """Turn a :class:`ServiceError` raised by an API handler into its JSON answer."""

    @functools.wraps(handler)
    def answered(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except ServiceError as error:
            return error.to_response()

    return answered  # type: ignore[return-value]
