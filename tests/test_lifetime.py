"""A synchronous request's work lives as long as its request (imagegen/serving/lifetime.py):
its result while the client waits; cancelled, and the cancel awaited, when the client hangs up
or the timeout passes. End to end: test_jobs_e2e.py (hang-up), test_errors_e2e.py (504)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imagegen.errors import Cancelled, TimedOut
from imagegen.serving.lifetime import while_requested


class Request:
    """What `while_requested` reads of a Starlette request: its `receive`, which answers the
    disconnect after ``hang_up_after`` seconds (never, if None)."""

    def __init__(self, hang_up_after: float | None) -> None:
        self.hang_up_after = hang_up_after

    async def receive(self) -> dict[str, Any]:
        if self.hang_up_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.hang_up_after or 0)
        return {"type": "http.disconnect"}


class Work:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.cancelled_and_cleaned_up = False

    async def run(self) -> str:
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # as a ticket sends its cancel to the generator
            self.cancelled_and_cleaned_up = True
            raise
        return "made"


def outcome(work: Work, timeout: float, hang_up_after: float | None) -> Any:
    async def handler() -> Any:
        try:
            result = await while_requested(work.run(), timeout, Request(hang_up_after))  # type: ignore[arg-type]
        except (Cancelled, TimedOut) as error:
            result = error
        await asyncio.sleep(0)  # the handler goes on to answer: not left cancelled
        return result

    return asyncio.run(handler())


def test_the_work_s_result_while_the_client_waits() -> None:
    assert outcome(Work(0.01), timeout=5, hang_up_after=None) == "made"
    assert outcome(Work(0.01), timeout=5, hang_up_after=1) == "made"


def test_a_hang_up_cancels_the_work_and_waits_for_it() -> None:
    work = Work(5)
    assert isinstance(outcome(work, timeout=5, hang_up_after=0.05), Cancelled)
    assert work.cancelled_and_cleaned_up


def test_the_timeout_cancels_the_work_and_waits_for_it() -> None:
    work = Work(5)
    assert isinstance(outcome(work, timeout=0.05, hang_up_after=None), TimedOut)
    assert work.cancelled_and_cleaned_up


def test_the_handler_s_own_cancel_still_cancels() -> None:
    """BentoML's own timeout cancels the handler: that is no hang-up to answer."""

    async def cancelled() -> None:
        task = asyncio.create_task(while_requested(Work(5).run(), 5, Request(None)))  # type: ignore[arg-type]
        await asyncio.sleep(0.02)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled())
