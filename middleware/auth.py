"""API-key authentication: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (or HTTP
basic auth with the key as the password, for AUTOMATIC1111's clients).

Every path needs a key except the public ones (``middleware.paths``: probes and the docs, read
with GET or HEAD), signed links (their route checks the signature) and CORS preflights.
``/metrics`` takes a key of ``metrics_keys`` (a scraper's, which opens nothing else) and no API
key: what it counts is the whole service's business, not one client's. Keys are kept as
SHA-256 digests and compared in constant time against every known key; the id logged for a
key is a prefix of its digest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .paths import is_metrics, is_public, is_signed_link

SHA256_PREFIX = "sha256:"


class ApiKeys:
    """Known keys as SHA-256 digests. ``identify`` names the key a client presented."""

    def __init__(self, digests: Iterable[bytes]) -> None:
        self._digests = tuple(digests)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> ApiKeys:
        """Plain keys, or ``sha256:<64 hex digits>`` so a key file need not hold the key."""
        digests = []
        for entry in (entry.strip() for entry in entries):
            if not entry or entry.startswith("#"):
                continue
            if entry.startswith(SHA256_PREFIX):
                hexdigest = entry.removeprefix(SHA256_PREFIX)
                try:
                    digest = bytes.fromhex(hexdigest)
                except ValueError:
                    digest = b""
                if len(digest) != hashlib.sha256().digest_size:
                    raise ValueError("an API key entry `sha256:...` must hold 64 hex digits")
                digests.append(digest)
            else:
                digests.append(hashlib.sha256(entry.encode()).digest())
        return cls(digests)

    @classmethod
    def load(cls, keys: str, keys_file: Path | None) -> ApiKeys:
        """Keys from a comma-separated list and a file of one key per line."""
        entries = keys.split(",")
        if keys_file is not None:
            try:
                entries += keys_file.read_text().splitlines()
            except OSError as error:
                raise ValueError(
                    f"the API keys file {keys_file} must be readable: {error}"
                ) from None
        return cls.parse(entries)

    def __len__(self) -> int:
        return len(self._digests)

    def identify(self, key: str) -> str | None:
        candidate = hashlib.sha256(key.encode()).digest()
        matched: bytes | None = None
        for digest in self._digests:  # no early exit: the time does not tell which key
            if hmac.compare_digest(candidate, digest):
                matched = digest
        return matched.hex()[:12] if matched is not None else None


def is_preflight(scope: Scope, headers: Headers) -> bool:
    """A CORS preflight, which carries no credentials by design."""
    return (
        scope["method"] == "OPTIONS"
        and "origin" in headers
        and "access-control-request-method" in headers
    )


def presented_key(headers: Headers) -> str | None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if scheme.lower() == "basic" and credentials.strip():
        # AUTOMATIC1111's clients know only HTTP basic auth (`--api-auth user:pass`): the
        # password is the key, the user name is not read.
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return headers.get("x-api-key") or None


class ApiKeyAuthMiddleware:
    def __init__(self, app: ASGIApp, *, keys: ApiKeys, metrics_keys: ApiKeys | None = None) -> None:
        if not len(keys):
            raise ValueError("`keys` must hold at least one API key")
        self.app = app
        self.keys = keys
        self.metrics_keys = metrics_keys or ApiKeys([])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if is_public(scope) or is_signed_link(scope) or is_preflight(scope, headers):
            await self.app(scope, receive, send)
            return

        key = presented_key(headers)
        keys, what = (
            (self.metrics_keys, "The metrics key (IMAGEGEN_METRICS_KEY)")
            if is_metrics(scope)
            else (self.keys, "A valid API key")
        )
        key_id = keys.identify(key) if key is not None else None
        if key_id is None:
            message = f"{what} is required: send `Authorization: Bearer <key>`."
            challenge = 'Bearer error="invalid_token"' if key is not None else "Bearer"
            response = JSONResponse(
                {"error": message}, status_code=401, headers={"WWW-Authenticate": challenge}
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key_id"] = key_id
        await self.app(scope, receive, send)
