"""Errors a request can meet, each with its HTTP answer. Client errors are one short sentence;
server errors never carry a traceback (that goes to the log)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic_core import ErrorDetails
from starlette.responses import JSONResponse

from imagegen.field_errors import sentence

Handler = TypeVar("Handler", bound=Callable[..., Any])


class ServiceError(Exception):
    status_code = 500
    # Seconds a client should wait before retrying; sent as `Retry-After` when set.
    retry_after: ClassVar[int | None] = None

    def __init__(
        self, message: str, *, field: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after or self.retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}

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
    retry_after = 10


class Overloaded(ServiceError):
    """More requests wait for the model than it can serve within the configured latency."""

    status_code = 503
    retry_after = 5


class TooMuchWork(ServiceError):
    """A request asks for more work than one request may."""

    status_code = 400


class Cancelled(ServiceError):
    """The generation was cancelled: by its client, or because its request went away."""

    status_code = 409


class TimedOut(ServiceError):
    """The request passed the service's timeout; its work was cancelled."""

    status_code = 504


class GenerationFailed(ServiceError):
    status_code = 500

    def __init__(
        self,
        message: str = "Image generation failed; the server log has the details.",
        *,
        field: str | None = None,
    ) -> None:
        super().__init__(message, field=field)


class RateLimited(ServiceError):
    """A client over one of its own limits: its work rate, or the jobs its key may hold."""

    status_code = 429


class JobNotFound(ServiceError):
    """No such job, or another key's."""

    status_code = 404


class JobConflict(ServiceError):
    """The job is not in a state that allows this: no result yet, already ended."""

    status_code = 409


class Forbidden(ServiceError):
    """A credential that does not grant this (a signed link not issued here, or expired)."""

    status_code = 403


class JobGone(ServiceError):
    """The job existed, but its result and events have expired."""

    status_code = 410


class StoreFull(ServiceError):
    """The job store holds its limit of jobs."""

    status_code = 503


class StoreUnavailable(ServiceError):
    """The job store (Redis) cannot be reached."""

    status_code = 503
    retry_after = 5


class Unsupported(ServiceError):
    """A field a foreign API would honour and this service cannot (A1111 answers 422)."""

    status_code = 422


def answers_errors(handler: Handler) -> Handler:
    """Turn a :class:`ServiceError` raised by an async API handler into its JSON answer."""

    @functools.wraps(handler)
    async def answered(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except ServiceError as error:
            return error.to_response()

    return answered  # type: ignore[return-value]


def answers_validation_errors(app: FastAPI, statuses: Mapping[str, int] | None = None) -> None:
    """FastAPI answers a body that breaks its schema with 422; this service's routes answer
    400, with the same ``detail`` as BentoML's APIs (the schema's sentences, located by
    field), except under a path prefix of ``statuses`` (a compatibility API that answers as
    its original does)."""

    async def bad_request(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        detail = []
        for item in error.errors():
            loc = [part for part in item["loc"] if part != "body"]
            # The body as a whole (none, `null`, an array): its own sentence, not pydantic's.
            message = item["msg"] if loc else sentence(cast(ErrorDetails, {**item, "loc": ()}))
            detail.append({"loc": loc, "msg": message, "type": item["type"]})
        path = request.url.path
        status = next((s for p, s in (statuses or {}).items() if path.startswith(p)), 400)
        return JSONResponse({"detail": detail}, status_code=status)

    app.add_exception_handler(RequestValidationError, bad_request)
