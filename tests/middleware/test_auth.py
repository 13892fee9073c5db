from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from middleware.auth import ApiKeyAuthMiddleware, ApiKeys
from tests.asgi import call, ok_app

KEY = "k-7f3a9c0e2b"
OTHER_KEY = "k-11aa22bb33"
KEYS = ApiKeys.parse([KEY, f"sha256:{hashlib.sha256(OTHER_KEY.encode()).hexdigest()}"])


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


METRICS_KEY = "scraper-key-5f4e"


def guarded() -> ApiKeyAuthMiddleware:
    return ApiKeyAuthMiddleware(ok_app, keys=KEYS, metrics_keys=ApiKeys.parse([METRICS_KEY]))


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": f"bearer {KEY}"},
        {"X-API-Key": KEY},
        {"Authorization": f"Bearer {OTHER_KEY}"},  # stored as sha256:<hex>
        {"Authorization": f"Basic {basic('any-user', KEY)}"},  # AUTOMATIC1111's clients
    ],
)
def test_a_known_key_is_let_through(headers: dict[str, str]) -> None:
    assert call(guarded(), "/generate/image", method="POST", headers=headers).status == 200


def test_a_missing_key_is_a_401_with_a_bearer_challenge() -> None:
    answer = call(guarded(), "/generate/image", method="POST")
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "API key" in answer.json()["error"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Basic {KEY}"},  # not base64
        {"Authorization": f"Basic {basic(KEY, 'wrong')}"},  # the key as the user name
        {"Authorization": f"Basic {basic('me', '')}"},
        {"X-API-Key": KEY.upper()},
        {"Authorization": "Bearer "},
    ],
)
def test_a_wrong_key_is_a_401(headers: dict[str, str]) -> None:
    answer = call(guarded(), "/generate/image", method="POST", headers=headers)
    assert answer.status == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert KEY not in answer.body.decode()


def test_the_key_id_is_recorded_and_is_not_the_key() -> None:
    seen = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["id"] = scope["state"]["api_key_id"]
        await PlainTextResponse("ok")(scope, receive, send)

    call(ApiKeyAuthMiddleware(app, keys=KEYS), "/models", headers={"X-API-Key": KEY})
    assert seen["id"] == hashlib.sha256(KEY.encode()).hexdigest()[:12]
    assert KEY not in seen["id"]


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/livez",
        "/readyz",
        "/healthz",
        "/docs",
        "/docs.json",
        "/static_content/swagger-ui-bundle.js",
        "/web/app.js",
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_public_paths_need_no_key(path: str, method: str) -> None:
    assert call(guarded(), path, method=method).status == 200


def test_a_cors_preflight_needs_no_key() -> None:
    headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert call(guarded(), "/generate/image", method="OPTIONS", headers=headers).status == 200


# `path` is scope["path"] as the server hands it to the router: percent-decoded, nothing else.
BYPASS_ATTEMPTS = [
    ("POST", "/generate/image"),
    ("POST", "/generate/image/"),
    ("POST", "//generate/image"),
    ("POST", "/generate//image"),
    ("POST", "/Generate/Image"),
    ("POST", "/docs/../generate/image"),
    ("POST", "/docs/./../generate/image"),
    ("POST", "/readyz/../generate/image"),
    ("POST", "/static_content/../generate/image"),
    ("GET", "/static_content/../generate/image"),
    ("GET", "/static_content/./x"),
    ("GET", "/static_content//generate/image"),
    ("GET", "/static_content/"),
    ("GET", "/web/../models"),
    ("GET", "/web//jobs/x"),
    ("GET", "/web/"),
    ("POST", "/web/app.js"),
    ("POST", "/docs"),
    ("POST", "/docs.json"),
    ("POST", "/livez"),
    ("PUT", "/readyz"),
    ("DELETE", "/metrics"),
    ("OPTIONS", "/generate/image"),  # no Origin / Access-Control-Request-Method: no preflight
    ("GET", "/docs/"),
    ("GET", "/DOCS"),
    ("GET", "/docs.json/../models"),
    ("GET", "/models"),
    ("GET", "/schema.json"),
    ("GET", "/docs%2F..%2Fmodels"),  # double-encoded: decoded once, still not public
    ("GET", "/docs\x00"),
    ("GET", " /docs"),
]


@pytest.mark.parametrize(("method", "path"), BYPASS_ATTEMPTS)
def test_tricks_never_skip_the_key(method: str, path: str) -> None:
    assert call(guarded(), path, method=method).status == 401


def test_the_public_check_uses_the_routers_path_under_a_root_path() -> None:
    async def under_root(scope: Scope, receive: Receive, send: Send) -> None:
        await guarded()(
            {**scope, "root_path": "/api", "path": f"/api{scope['path']}"}, receive, send
        )

    assert call(under_root, "/docs").status == 200
    assert call(under_root, "/generate/image", method="POST").status == 401


def test_keys_load_from_the_list_and_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    digest = hashlib.sha256(b"from-file-2").hexdigest()
    key_file.write_text(f"# comment\nfrom-file-1\n\nsha256:{digest}\n")
    keys = ApiKeys.load("listed-1, listed-2", key_file)
    assert len(keys) == 4
    assert all(keys.identify(k) for k in ("listed-1", "listed-2", "from-file-1", "from-file-2"))
    assert keys.identify("unknown") is None


def test_no_keys_configured_means_none_loaded() -> None:
    assert len(ApiKeys.load("", None)) == 0


@pytest.mark.parametrize("entry", ["sha256:xyz", "sha256:abcd", f"sha256:{'0' * 63}"])
def test_a_malformed_sha256_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        ApiKeys.parse([entry])


def test_an_unreadable_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be readable"):
        ApiKeys.load("", tmp_path / "missing")


def test_auth_without_keys_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one API key"):
        ApiKeyAuthMiddleware(ok_app, keys=ApiKeys([]))


def test_metrics_take_the_metrics_key_which_opens_nothing_else() -> None:
    scraper = {"Authorization": f"Bearer {METRICS_KEY}"}
    client = {"Authorization": f"Bearer {KEY}"}
    assert call(guarded(), "/metrics", headers=scraper).status == 200
    refused = call(guarded(), "/metrics", headers=client)  # an API key is a client's, not ops'
    assert refused.status == 401
    assert "IMAGEGEN_METRICS_KEY" in refused.json()["error"]
    assert call(guarded(), "/metrics").status == 401
    assert call(guarded(), "/models", headers=scraper).status == 401
