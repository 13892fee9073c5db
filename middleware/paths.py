"""The one list of paths the middlewares treat specially, matched one way, and whom a request
is counted against.

Probes and metrics are polled by machines: they are never limited or logged, and must answer
under any load. Probes need no key, and neither do the docs and the playground page (its
files, not what it asks of the API); metrics take the metrics key. Everything is matched on
the path exactly as the router will match it, for GET and HEAD only, so a slash,
dot-segment, percent-encoding, case or method trick can only turn a public path into a
private one, never the reverse.
"""

from __future__ import annotations

from starlette.types import Scope

METRICS_PATH = "/metrics"
PROBE_PATHS = frozenset({"/livez", "/readyz", "/healthz", METRICS_PATH})
# Metrics are not public: with auth on, they take the metrics key (the auth middleware).
PUBLIC_PATHS = PROBE_PATHS - {METRICS_PATH} | {"/", "/docs", "/docs.json", "/docs.js"}
# Swagger UI's scripts and styles, served by BentoML, and the playground's files.
PUBLIC_ASSETS = ("/static_content/", "/web/")
# Signed links to a job's images: the link is the credential (its route checks it).
SIGNED_LINKS = "/v1/files/"
READ_METHODS = frozenset({"GET", "HEAD"})


def route_path(scope: Scope) -> str:
    """The path the router matches: Starlette strips ``root_path`` the same way."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


def is_probe(scope: Scope) -> bool:
    return scope["method"] in READ_METHODS and route_path(scope) in PROBE_PATHS


def is_public(scope: Scope) -> bool:
    """A read of a probe, the docs, the playground or one of their assets."""
    if scope["method"] not in READ_METHODS:
        return False
    path = route_path(scope)
    if path in PUBLIC_PATHS:
        return True
    prefix = next((prefix for prefix in PUBLIC_ASSETS if path.startswith(prefix)), None)
    segments = path.removeprefix(prefix or "").split("/")
    return prefix is not None and all(s not in ("", ".", "..") for s in segments)


def is_signed_link(scope: Scope) -> bool:
    """A read of a signed link, which carries its own credential instead of a key."""
    return scope["method"] in READ_METHODS and route_path(scope).startswith(SIGNED_LINKS)


def client_bucket(scope: Scope) -> str:
    """Whom a request is counted against: its API key (the id auth records), or its address
    without auth."""
    key_id = scope.get("state", {}).get("api_key_id")
    client = scope.get("client")
    return f"key:{key_id}" if key_id else f"addr:{client[0] if client else 'unknown'}"


def is_metrics(scope: Scope) -> bool:
    return scope["method"] in READ_METHODS and route_path(scope) == METRICS_PATH
