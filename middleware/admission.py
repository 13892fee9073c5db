"""Admission: at most ``max_concurrency`` requests in flight, at most ``per_client`` of them
from one client (API key, or address without auth), each answered within ``timeout`` seconds.

Over either limit a request gets 429 with ``Retry-After`` at once instead of queueing without
bound, so one client holding its slots (event streams, slow bodies) never starves the others;
one that has not started its answer after ``timeout`` gets 504. Both answers come from
inside this project's stack, so they carry the request id and an access line like any other.
BentoML's own limits stay configured above these, looser, as a backstop. Probes are exempt:
they must answer under any load.

At the timeout the 504 is sent from a task of its own, not by cancelling the app: a synchronous
handler blocks a worker thread that cancellation cannot interrupt, and waiting for it would
hold the answer back. Whatever the app sends afterwards is dropped, and the request still
counts as in flight until its handler returns, since it still holds a thread. (A timer per
request, rather than a task per request as in BentoML's timeout, keeps the cost small.)
"""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .paths import client_bucket, is_probe


class AdmissionMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_concurrency: int,
        timeout: float,
        per_client: int | None = None,
        retry_after: int = 2,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"`max_concurrency` must be at least 1, but is {max_concurrency}")
        if per_client is not None and per_client < 1:
            raise ValueError(f"`per_client` must be at least 1, but is {per_client}")
        if timeout <= 0:
            raise ValueError(f"`timeout` must be positive, but is {timeout}")
        self.app = app
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.per_client = per_client or max_concurrency
        self.retry_after = retry_after
        self.in_flight = 0
        self.by_client: dict[str, int] = {}  # only clients with requests in flight

    def _refusal(self, client: str) -> JSONResponse | None:
        """The 429 for a request over a limit, else None."""
        if self.in_flight >= self.max_concurrency:
            limit = f"The server is at its limit of {self.max_concurrency} requests in flight"
        elif self.by_client.get(client, 0) >= self.per_client:
            who = "This API key" if client.startswith("key:") else "This client address"
            limit = f"{who} has its limit of {self.per_client} requests in flight"
        else:
            return None
        return JSONResponse(
            {"error": f"{limit}; retry in {self.retry_after} s."},
            status_code=429,
            headers={"Retry-After": str(self.retry_after)},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_probe(scope):
            await self.app(scope, receive, send)
            return
        client = client_bucket(scope)
        refusal = self._refusal(client)
        if refusal is not None:
            await refusal(scope, receive, send)
            return

        loop = asyncio.get_running_loop()
        started = abandoned = False
        answering: asyncio.Task[None] | None = None

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if abandoned:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def answer_timeout() -> None:
            nonlocal abandoned
            if started:
                return
            abandoned = True
            response = JSONResponse(
                {"error": f"The request took longer than {self.timeout:g} s."}, status_code=504
            )
            await response(scope, receive, send)

        def on_timeout() -> None:
            nonlocal answering
            answering = loop.create_task(answer_timeout())

        timer = loop.call_later(self.timeout, on_timeout)
        self.in_flight += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        try:
            await self.app(scope, receive, tracked_send)
        finally:
            timer.cancel()
            self.in_flight -= 1
            if self.by_client[client] == 1:
                del self.by_client[client]
            else:
                self.by_client[client] -= 1
            if answering is not None:
                await answering
