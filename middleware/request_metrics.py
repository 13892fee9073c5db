"""Count every answer in Prometheus by route *template*, method and status, and time it.

Labels stay bounded whatever clients send: the route is the template the router matched
(`/jobs/{job_id}`, never a job's id), `unmatched` for any path no route has, and methods
outside HTTP's own are `other`. (BentoML's own HTTP metrics label the raw path, so every
unknown path and every job id made a series of its own; the service turns them off.)
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

import prometheus_client
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def route_label(scope: Scope) -> str:
    """The template of the route the router matched (Starlette leaves it in the scope)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


@cache
def instruments(namespace: str) -> tuple[prometheus_client.Counter, prometheus_client.Histogram]:
    """Registered once per process (an app may be built more than once), on first use: after
    BentoML has set up prometheus_client's multi-process mode."""
    labels = ["route", "method", "status"]
    answers = prometheus_client.Counter(
        f"{namespace}_http_requests", "HTTP answers by route template.", labels
    )
    seconds = prometheus_client.Histogram(
        f"{namespace}_http_request_duration_seconds",
        "Time to the end of each HTTP answer, by route template.",
        labels,
    )
    return answers, seconds


@cache
def labelled(namespace: str, route: str, method: str, status: int) -> tuple[Any, Any]:
    """The counter and histogram of one label set, labelled once: ``labels`` costs more than
    the ``inc`` or ``observe`` after it. As bounded as the labels (prometheus_client keeps a
    series per label set anyway)."""
    answers, seconds = instruments(namespace)
    labels = (route, method, str(status))
    return answers.labels(*labels), seconds.labels(*labels)


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, *, namespace: str = "imagegen") -> None:
        if not namespace.isidentifier():
            raise ValueError(f"`namespace` must be a metric name prefix, but is {namespace!r}")
        self.app = app
        self.namespace = namespace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            answers, seconds = labelled(self.namespace, route_label(scope), method, status)
            answers.inc()
            seconds.observe(time.perf_counter() - started)
