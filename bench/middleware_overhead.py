"""What the middleware stack adds per request, on a trivial endpoint.

The same ASGI app is called bare and wrapped in the service's whole stack, as
``app.stack.middleware_stack`` lists it (request metrics, access log, security headers,
request id, error body, timing, cross-site, API-key auth, rate limit, admission, JSON bodies,
body limits), in-process, so only the
middlewares' own cost is measured, not the network or the server. Access lines are formatted
as in production and written to /dev/null.

    python -m bench.middleware_overhead [--requests N] [--rounds R] [--json PATH]

Prints a table and writes JSON (default bench/results/middleware_overhead.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logs import configure_logging
from app.stack import middleware_stack, wrap
from bench.reporting import machine, report
from imagegen.settings import Settings
from middleware.auth import ApiKeys

KEY = "bench-key"
BODY = json.dumps({"prompt": "a lighthouse", "seed": 1}).encode()


async def trivial(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("ok")(scope, receive, send)


def full_stack(app: ASGIApp) -> ASGIApp:
    """``app`` inside every middleware the service mounts, in its order, all of them on."""
    settings = Settings(rate_limit="1000000000/second")
    keys = ApiKeys.parse([KEY, "other-key-1", "other-key-2"])
    return wrap(app, middleware_stack(settings, keys))


async def per_request_seconds(app: ASGIApp, requests: int) -> float:
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/generate/image",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {KEY}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Message) -> None:
        return None

    started = time.perf_counter()
    for _ in range(requests):
        await app({**scope, "state": {}}, receive, send)
    return (time.perf_counter() - started) / requests


def measure(requests: int, rounds: int) -> dict[str, Any]:
    bare, stacked = trivial, full_stack(trivial)
    samples: dict[str, list[float]] = {"bare": [], "stack": []}
    for _ in range(rounds):  # interleaved, so drift hits both alike
        samples["bare"].append(asyncio.run(per_request_seconds(bare, requests)))
        samples["stack"].append(asyncio.run(per_request_seconds(stacked, requests)))
    bare_us = statistics.median(samples["bare"]) * 1e6
    stack_us = statistics.median(samples["stack"]) * 1e6
    return {
        "requests_per_round": requests,
        "rounds": rounds,
        "bare_us_median": round(bare_us, 1),
        "stack_us_median": round(stack_us, 1),
        "added_us_median": round(stack_us - bare_us, 1),
        "machine": machine(),
        "python": platform.python_version(),
    }


def table(result: dict[str, Any]) -> str:
    return (
        "| per request (median of rounds) | µs |\n|---|---|\n"
        f"| trivial endpoint, bare | {result['bare_us_median']} |\n"
        f"| same, full middleware stack | {result['stack_us_median']} |\n"
        f"| **added by the stack** | **{result['added_us_median']}** |\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path("bench/results/middleware_overhead.json"))
    args = parser.parse_args(argv)

    with open(os.devnull, "w") as devnull:
        configure_logging("INFO", stream=devnull)
        result = measure(args.requests, args.rounds)

    return report(result, args.json, table)


if __name__ == "__main__":
    main()
