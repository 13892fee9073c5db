"""A job's events as a Server-Sent Events stream: ``id:``, ``event:`` and ``data:`` (one JSON
object) per event, a comment line as keep-alive, resumable with ``Last-Event-ID``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from .jobs import JobStore


def frame(event_id: int, event: str, data: dict[str, Any]) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


def resume_point(last_event_id: str | None) -> int:
    """The event to resume after; a missing or malformed header replays from the start."""
    try:
        return max(int(last_event_id or 0), 0)
    except ValueError:
        return 0


async def event_stream(
    store: JobStore, job_id: str, after: int, previews: bool
) -> AsyncIterator[str]:
    """Framed events of ``job_id`` after number ``after``, up to and including the terminal
    one; previews only when asked for."""
    async for item in store.follow(job_id, after):
        if item is None:
            yield ": keep-alive\n\n"
            continue
        event_id, event, data = item
        if not previews:
            data = {key: value for key, value in data.items() if key != "preview"}
        yield frame(event_id, event, data)
