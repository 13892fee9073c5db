"""The service's middleware stack as data: the service mounts it, and the tests and the
overhead benchmark wrap apps in exactly the same list."""

from __future__ import annotations

import logging

from starlette.middleware import Middleware
from starlette.types import ASGIApp

from imagegen.serving.compat.a1111 import A1111_PREFIX
from imagegen.serving.compat.openai import EDITS_PATH, openai_error
from imagegen.settings import Settings
from middleware.access_log import AccessLogMiddleware
from middleware.admission import AdmissionMiddleware
from middleware.auth import ApiKeyAuthMiddleware, ApiKeys
from middleware.body_limit import BodyLimitMiddleware
from middleware.content_type import JsonBodyMiddleware
from middleware.cross_site import CrossSiteMiddleware
from middleware.error_body import ErrorBodyMiddleware
from middleware.rate_limit import RateLimitMiddleware
from middleware.request_id import RequestIdMiddleware
from middleware.request_metrics import RequestMetricsMiddleware
from middleware.security_headers import SecurityHeadersMiddleware
from middleware.timing import TimingMiddleware

logger = logging.getLogger(__name__)

TIMEOUT_GRACE_S = 5


def middleware_stack(settings: Settings, api_keys: ApiKeys) -> list[Middleware]:
    """Outermost first. BentoML runs its tracing, its own timeout and concurrency limit
    (looser, a backstop) outside these (its HTTP metrics are off: they label raw paths), and
    CORS inside them (so preflights pass auth as public).

    1. request metrics, by route template, method and status: every answer, those the layers
       below refuse included;
    2. access log: sees the final status and bytes of everything inside, the request id and
       the key id auth records;
    3. security headers (`nosniff`, a Content-Security-Policy) on every answer;
    4. request id: set before anything else logs;
    5. error body: every error answer inside becomes one JSON shape carrying that id (in
       OpenAI's shape under `/v1/`);
    6. timing: `total` covers auth, limits and the handler;
    7. cross-site requests refused by `Origin`, before anything reads them;
    8. auth (the metrics key for `/metrics`), then 9. the per-key rate limit, which needs the
       key id;
    10. admission: requests in flight (in total and per key) and the timeout, for requests
        that passed the above;
    11. JSON bodies only (a form on OpenAI's image edits; undeclared JSON on A1111's API), then
        12. the body limits (size, time to arrive): neither reads a refused body.
    """
    stack = [
        Middleware(RequestMetricsMiddleware),
        Middleware(AccessLogMiddleware, log_prompts=settings.log_prompts),
        Middleware(SecurityHeadersMiddleware),
        Middleware(RequestIdMiddleware),
        Middleware(ErrorBodyMiddleware, dialects={"/v1/": openai_error}),
        Middleware(TimingMiddleware),
        Middleware(CrossSiteMiddleware, allowed_origins=settings.origins),
    ]
    if len(api_keys):
        metrics_keys = ApiKeys.parse([settings.metrics_key])
        if not len(metrics_keys):
            logger.warning("auth is on and IMAGEGEN_METRICS_KEY is unset: /metrics answers 401")
        stack.append(Middleware(ApiKeyAuthMiddleware, keys=api_keys, metrics_keys=metrics_keys))
    else:
        logger.warning(
            "no API keys configured (IMAGEGEN_API_KEYS, IMAGEGEN_API_KEYS_FILE): auth is off"
        )
    if settings.rate_limit:
        stack.append(
            Middleware(
                RateLimitMiddleware, rate=settings.rate_limit, storage=settings.limits_storage
            )
        )
    stack += [
        Middleware(
            AdmissionMiddleware,
            max_concurrency=settings.max_concurrency,
            per_client=settings.concurrency_per_key,
            # Generation handlers cancel their work and answer 504 at `timeout` themselves;
            # this later one answers for anything else that hangs.
            timeout=settings.timeout + TIMEOUT_GRACE_S,
        ),
        Middleware(
            JsonBodyMiddleware,
            multipart_paths=frozenset({EDITS_PATH}),
            undeclared_prefixes=(A1111_PREFIX,),
        ),
        Middleware(
            BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout_s
        ),
    ]
    return stack


def wrap(app: ASGIApp, stack: list[Middleware]) -> ASGIApp:
    """``app`` inside ``stack``, the first entry outermost, as the server mounts it."""
    for middleware in reversed(stack):
        app = middleware.cls(app, *middleware.args, **middleware.kwargs)
    return app
