"""This service's log lines: JSON on stdout, each carrying the id of the request it belongs to."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError
from pythonjsonlogger.json import JsonFormatter
from starlette.requests import ClientDisconnect

from middleware.request_id import REQUEST_ID

PROJECT_LOGGERS = ("app", "imagegen", "models", "middleware")
# BentoML logs every exception its API wrapper catches with a traceback, client errors too.
BENTOML_API_LOGGER = "bentoml._internal.server.http_app"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):  # the access line brings its own
            record.request_id = REQUEST_ID.get()
        return True


def is_client_error(error: BaseException | None) -> bool:
    """The client's doing: a body that fails the schema, a client gone mid-upload, or an error
    BentoML answers with a 4xx (a pickle body, say)."""
    if isinstance(error, ValidationError | ClientDisconnect):
        return True
    return isinstance(error, BentoMLException) and error.error_code < 500


class ClientErrorFilter(logging.Filter):
    """Drops BentoML's ERROR lines with a traceback for client errors: the access line already
    records the 4xx. A server's fault keeps its ERROR and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_client_error(record.exc_info[1] if record.exc_info else None)


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """JSON lines to ``stream`` (stdout by default). Idempotent: BentoML imports the service
    in more than one process."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "traceback"},
            timestamp="time",
        )
    )
    handler.addFilter(RequestIdFilter())
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    bentoml_api = logging.getLogger(BENTOML_API_LOGGER)
    if not any(isinstance(f, ClientErrorFilter) for f in bentoml_api.filters):
        bentoml_api.addFilter(ClientErrorFilter())
