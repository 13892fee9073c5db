"""Webhooks: a job's client may name a URL to be told once when the job ends.

Only hosts the operator lists (``IMAGEGEN_WEBHOOK_HOSTS``: ``host:port`` for that port, a bare
``host`` for its scheme's default port, 80 or 443) may be named; with none listed, webhooks
are off. A URL a client gives is never fetched otherwise: no redirects are followed, nothing is
read but the status. A delivery that fails (no connection, 5xx, 429) is retried with
exponential backoff, a bounded number of times.

Deliveries are signed as Standard Webhooks (standardwebhooks.com, Svix's scheme) sign them:
``webhook-id`` (one per delivery, the same on each retry, so a receiver can drop a
replay it has seen), ``webhook-timestamp`` (Unix seconds of the attempt, so a receiver can
refuse an old one; the standard's tolerance is 5 minutes) and ``webhook-signature``:
``v1,`` and the base64 HMAC-SHA256, under ``IMAGEGEN_WEBHOOK_SECRET``'s bytes, of
``{id}.{timestamp}.{body}``. The standard's libraries take the secret as ``whsec_`` followed
by its base64.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx

from imagegen.errors import InvalidField

logger = logging.getLogger(__name__)

ATTEMPTS = 4
FIRST_BACKOFF_S = 1.0
TIMEOUT_S = 10.0
DEFAULT_PORTS = {"http": 80, "https": 443}


def signature(secret: str, delivery: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` of a delivery (Standard Webhooks' version 1)."""
    signed = f"{delivery}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(secret.encode(), signed, hashlib.sha256)).decode()


class Webhooks:
    def __init__(
        self,
        hosts: str,
        secret: str,
        *,
        attempts: int = ATTEMPTS,
        backoff_s: float = FIRST_BACKOFF_S,
    ) -> None:
        self.hosts = frozenset(host.strip().lower() for host in hosts.split(",") if host.strip())
        self.secret = secret
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._deliveries: set[asyncio.Task[bool]] = set()

    def check(self, url: str) -> None:
        """Refuse, with a 400 naming the rule, a webhook this server will not call."""

        def refuse(rule: str) -> InvalidField:
            return InvalidField(f"`webhook` {rule}, but is {url[:80]!r}.", field="webhook")

        if not self.hosts:
            raise InvalidField(
                "`webhook` is not accepted: this server calls no webhooks "
                "(IMAGEGEN_WEBHOOK_HOSTS is empty).",
                field="webhook",
            )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise refuse("must be a valid URL") from None
        if parts.scheme not in ("http", "https"):
            raise refuse("must be an http or https URL")
        if parts.username is not None or parts.password is not None:
            raise refuse("must not carry credentials")
        host = (parts.hostname or "").lower()
        default = port is None or port == DEFAULT_PORTS[parts.scheme]
        if f"{host}:{port or DEFAULT_PORTS[parts.scheme]}" not in self.hosts and not (
            default and host in self.hosts
        ):
            allowed = ", ".join(sorted(self.hosts))
            raise refuse(f"must name a host this server allows ({allowed})")

    def notify(self, url: str, payload: dict[str, Any]) -> None:
        """Deliver in the background; the task is kept until it ends."""
        task = asyncio.create_task(self.deliver(url, payload))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def deliver(self, url: str, payload: dict[str, Any]) -> bool:
        """POST ``payload``; True once a 2xx answers. No redirect is followed."""
        body = json.dumps(payload).encode()
        delivery = f"msg_{uuid.uuid4().hex}"
        delay = self.backoff_s
        async with httpx.AsyncClient(follow_redirects=False, timeout=TIMEOUT_S) as client:
            for attempt in range(1, self.attempts + 1):
                timestamp = int(time.time())
                headers = {
                    "Content-Type": "application/json",
                    "webhook-id": delivery,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": signature(self.secret, delivery, timestamp, body),
                    "X-Imagegen-Event": f"job.{payload['status']}",
                }
                try:
                    response = await client.post(url, content=body, headers=headers)
                    if response.is_success:
                        return True
                    if response.status_code != 429 and response.status_code < 500:
                        logger.warning("webhook refused with %d; not retried", response.status_code)
                        return False
                    outcome = f"status {response.status_code}"
                except httpx.HTTPError as error:
                    outcome = type(error).__name__
                if attempt < self.attempts:
                    logger.info("webhook attempt %d failed (%s); retrying", attempt, outcome)
                    await asyncio.sleep(delay)
                    delay *= 2
        logger.warning("webhook not delivered after %d attempts", self.attempts)
        return False
