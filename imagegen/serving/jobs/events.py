"""A job's events as a Server-Sent Events stream: ``id:``, ``event:`` and ``data:`` (one JSON
object) per event, a comment line as keep-alive, resumable with ``Last-Event-ID``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from imagegen.errors import ServiceError
from imagegen.serving.jobs.jobs import Jobs


def frame(event_id: str | None, event: str, data: dict[str, Any]) -> str:
    """One event; without an id (an error that ends the stream) the client's
    `Last-Event-ID` stays the last real event's."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


async def event_stream(
    jobs: Jobs, owner: str, job_id: str, after: str | None, previews: bool
) -> AsyncIterator[str]:
    """Framed events of ``job_id`` after the one with id ``after`` (`Last-Event-ID`), up to
    and including the terminal one; previews only when asked for. While nothing happens, a
    keep-alive comment, and a look at the job: one whose replica died is ended then."""
    try:
        async for item in jobs.store.follow(job_id, after):
            if item is None:
                await jobs.find(owner, job_id)
                yield ": keep-alive\n\n"
                continue
            event_id, event, data = item
            if not previews:
                data = {key: value for key, value in data.items() if key != "preview"}
            yield frame(event_id, event, data)
    except ServiceError as error:  # expired, or the store went away: the stream ends
        yield frame(None, "error", {"error": error.message})
