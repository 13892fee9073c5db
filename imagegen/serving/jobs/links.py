"""Signed, expiring links to a job's images: what OpenAI's `response_format: url` answers.

A client downloads such a link with a plain GET and no key (LibreChat's DALL-E tool does), so
the link carries its own credential: an HMAC-SHA256, under the service's URL secret, of the
job, its owner, the image, its format and the expiry. Nothing else about a job is reachable
without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from imagegen.errors import Forbidden
from middleware.paths import SIGNED_LINKS as PREFIX  # the path auth lets through

# GET {PREFIX}{job_id}/{image}.{ext}?expires=..&signature=..
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}  # output format -> file extension


class Links:
    def __init__(self, secret: str, ttl: float) -> None:
        """Unset ``secret``: one drawn for this process (its links work on it alone)."""
        self._key = secret.encode() if secret else secrets.token_bytes(32)
        self.ttl = ttl

    def _signature(self, job_id: str, owner: str, image: int, ext: str, expires: int) -> str:
        message = f"{job_id}\n{owner}\n{image}\n{ext}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def url(self, base: str, job_id: str, owner: str, image: int, output_format: str) -> str:
        """A link to image ``image`` of the job, valid until the job expires."""
        ext = EXTENSIONS[output_format]
        expires = int(time.time() + self.ttl)
        signature = self._signature(job_id, owner, image, ext, expires)
        return f"{base}{PREFIX}{job_id}/{image}.{ext}?expires={expires}&signature={signature}"

    def check(
        self, job_id: str, owner: str, image: int, ext: str, expires: int, signature: str
    ) -> None:
        """Raise :class:`Forbidden` unless the link was made here and has not expired."""
        expected = self._signature(job_id, owner, image, ext, expires)
        if not hmac.compare_digest(expected, signature) or expires < time.time():
            raise Forbidden("This link is not valid: it was not issued here, or has expired.")
