"""Admission by work and by estimated wait, positions and ETAs, with a fake generator that
reports steps as the real one does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import prometheus_client
import pytest
from PIL import Image
from starlette.requests import Request

from imagegen.engine.loading import LoadedModel
from imagegen.errors import Overloaded, RateLimited, TooMuchWork
from imagegen.hop import Generation
from imagegen.schemas import GenerationParameters, ImageRequest, ModelInfo, WorkItem
from imagegen.serving.gateway import Gateway, job_store
from imagegen.serving.queue import WorkQueue
from imagegen.serving.remote import GeneratorClient
from imagegen.settings import Settings
from imagegen.work import evaluation_work, fixed_work, image_work, step_work
from tests.conftest import PARAMETERS

# 64x64, 4 steps, guided: 0.0328 megapixel-steps of steps and 0.0041 of decoding.
UNIT = image_work(PARAMETERS)


def queue(max_wait_s: float = 10, max_request_work: float = 1.0) -> WorkQueue:
    return WorkQueue(
        GeneratorClient(object()), max_request_work=max_request_work, max_wait_s=max_wait_s
    )


DECODING = 64 * 64 / 1e6  # an image's fixed work: its decode and encode, one evaluation's


def test_work_counts_pixels_steps_images_and_guidance() -> None:
    unguided = PARAMETERS.model_copy(update={"guidance_scale": 1.0})
    assert pytest.approx(4 * 64 * 64 * 2 / 1e6 + DECODING) == UNIT
    assert image_work(unguided) - DECODING == pytest.approx((UNIT - DECODING) / 2)


def test_a_second_order_scheduler_counts_two_evaluations_a_step() -> None:
    """Heun evaluates the denoiser twice a step (measured 1.74x Euler's time at one charge
    before this rule: docs/benchmarks.md, work against time)."""
    heun = PARAMETERS.model_copy(update={"scheduler": "heun"})
    assert step_work(heun) == 2 * step_work(PARAMETERS) == 2 * evaluation_work(heun)
    assert image_work(heun) - DECODING == pytest.approx(2 * (UNIT - DECODING))


def test_every_image_pays_for_its_decode_even_at_one_step() -> None:
    one = PARAMETERS.model_copy(update={"num_inference_steps": 1})
    assert fixed_work(one) == pytest.approx(DECODING)
    assert image_work(one) == pytest.approx(step_work(one) + DECODING)


def test_a_request_over_the_budget_is_refused_naming_the_limit() -> None:
    with pytest.raises(TooMuchWork) as refused:
        queue(max_request_work=UNIT * 2.5).admit([PARAMETERS] * 3)
    assert refused.value.status_code == 400
    assert "over the limit of 0.09216 per request" in refused.value.message
    assert "`num_inference_steps` up to 3 fits" in refused.value.message


def test_without_a_measured_rate_nothing_waits_and_no_eta_is_guessed() -> None:
    q = queue()
    first = q.admit([PARAMETERS])
    assert q.wait_s() == 0 and first.eta_s is None and not q.full


def test_each_size_has_its_own_rate_and_unknown_sizes_borrow_the_nearest() -> None:
    q = queue()
    large = PARAMETERS.model_copy(update={"width": 256, "height": 256})
    q.record_rate(PARAMETERS, 1.2)
    q.record_rate(large, 0.3)
    assert q.rates.seconds_per_work(PARAMETERS) == 1.2 and q.rates.seconds_per_work(large) == 0.3
    larger = PARAMETERS.model_copy(update={"width": 512, "height": 512})
    assert q.rates.seconds_per_work(larger) == 0.3
    q.record_rate(large, 0.4)  # weighted towards the newest measurement
    assert q.rates.seconds_per_work(large) == pytest.approx(0.3 + 0.3 * 0.1)


def test_positions_and_etas_follow_the_work_ahead() -> None:
    q = queue()
    q.record_rate(PARAMETERS, 10.0)
    first, second = q.admit([PARAMETERS]), q.admit([PARAMETERS] * 2)
    assert (first.position, second.position) == (0, 1)
    assert first.eta_s == pytest.approx(10 * UNIT)
    assert second.eta_s == pytest.approx(30 * UNIT)
    first.discard()
    assert second.position == 0


def test_a_request_that_would_wait_past_the_bound_is_a_503_with_the_estimate() -> None:
    q = queue(max_wait_s=1.0)
    q.record_rate(PARAMETERS, 1.0 / UNIT)  # one image: one second
    q.admit([PARAMETERS] * 2)  # admitted: nothing ahead
    assert q.full  # two seconds queued: readiness turns 503
    with pytest.raises(Overloaded) as shed:
        q.admit([PARAMETERS])
    assert shed.value.status_code == 503
    assert shed.value.headers["Retry-After"] == "2"  # ceil(2 s - 1 s bound) + 1
    assert "about 2 s of work" in shed.value.message


class SteppingGenerator:
    """Reports two steps per image, 0.5 s apart, as the generator service's tracker would."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.ids: list[str] = []
        self.running = asyncio.Event()

    def generate_sd_tiny(self, items: list[WorkItem]) -> list[Any]:
        raise NotImplementedError  # replaced per test

    async def cancel(self, ids: list[str]) -> None:
        self.cancelled += ids

    async def events(self) -> AsyncIterator[str]:
        yield '{"connected": true}\n'
        await self.running.wait()
        for step in (0, 1, 2):
            for id_ in self.ids:
                yield (
                    f'{{"id": "{id_}", "step": {step}, "steps": 2, "images": {len(self.ids)}, '
                    f'"at": {100 + step * 0.5}, "preview": null}}\n'
                )
        await asyncio.sleep(3600)


def test_step_events_measure_the_rate_and_cancelling_reaches_the_generator() -> None:
    generator = SteppingGenerator()
    started = asyncio.Event()

    async def scenario() -> None:
        q = WorkQueue(GeneratorClient(generator), max_request_work=1.0, max_wait_s=10)
        parameters = PARAMETERS.model_copy(update={"num_inference_steps": 2})
        ticket = q.admit([parameters, parameters])
        seen: list[int] = []

        async def listener(_: Any, event: dict[str, Any]) -> None:
            seen.append(event["step"])
            if len(seen) == 6:
                started.set()

        async def never_ending(items: list[WorkItem]) -> Any:
            generator.ids = [item.id for item in items]
            generator.running.set()
            await asyncio.sleep(3600)

        q.client.generate = never_ending  # type: ignore[method-assign]
        running = asyncio.create_task(ticket.run(listener))
        await asyncio.wait_for(started.wait(), 5)
        assert ticket.step == 2 and ticket.fraction == 1.0
        # 0.5 s per step of a call of two images of (parameters' work / 2 steps) each
        # Each event is one evaluation of the denoiser for both images of the call.
        assert q.rates.seconds_per_work(parameters) == pytest.approx(
            0.5 / (2 * evaluation_work(parameters))
        )
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert generator.cancelled == ticket.ids
        assert q.depth == 0

    asyncio.run(scenario())


def test_the_gauges_follow_the_queue_once_the_running_task_yields() -> None:
    def depth() -> float | None:
        return prometheus_client.REGISTRY.get_sample_value(
            "imagegen_queue_depth", {"model": "gauged:v1"}
        )

    async def scenario() -> None:
        q = WorkQueue(
            GeneratorClient(object()), max_request_work=1.0, max_wait_s=10, model="gauged:v1"
        )
        first = q.admit([PARAMETERS])
        assert depth() in (None, 0.0)  # not on the request's way
        await asyncio.sleep(0)
        assert depth() == 1.0
        second = q.admit([PARAMETERS])
        first.discard()
        second.discard()
        await asyncio.sleep(0)
        assert depth() == 0.0  # the last state, whatever came between

    asyncio.run(scenario())


def test_parameters_of_a_ticket_keep_their_order_and_get_distinct_ids() -> None:
    q = queue()
    batch: list[GenerationParameters] = [
        PARAMETERS.model_copy(update={"seed": seed}) for seed in range(3)
    ]
    ticket = q.admit(batch)
    items = ticket.items(reported=True)
    assert [item.parameters.seed for item in items] == [0, 1, 2]
    assert len({item.id for item in items}) == 3
    assert [item.preview for item in items] == [True, False, False]
    assert all(item.report for item in items)
    unreported = ticket.items(reported=False)
    assert [item.id for item in unreported] == [item.id for item in items] == ticket.ids
    assert not any(item.report or item.preview for item in unreported)


class LoadedGenerator:
    """An in-process generator service that has loaded its model."""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    async def models(self) -> list[ModelInfo]:
        return [self.info]


def test_readiness_turns_503_while_the_queue_is_past_its_bound(tiny_model: LoadedModel) -> None:
    async def scenario() -> None:
        settings = Settings(max_queue_wait_s=1)
        gateway = Gateway(LoadedGenerator(tiny_model.info), settings, job_store(settings))
        assert await gateway.ready()
        q = gateway.queue(await gateway.model(None))
        q.record_rate(PARAMETERS, 1.0 / UNIT)
        ticket = q.admit([PARAMETERS] * 2)
        assert not await gateway.ready()  # a load balancer stops sending it work
        ticket.discard()
        assert await gateway.ready()

    asyncio.run(scenario())


def finished(items: list[WorkItem], batch_size: int) -> list[Generation]:
    """``items``' images, made in one 2 s call of ``batch_size`` images."""
    return [
        Generation(
            image=Image.new("RGB", (64, 64)),
            parameters=item.parameters,
            received=10.0,
            started=10.0,
            denoised=12.0,
            finished=12.0,
            batch_size=batch_size,
        )
        for item in items
    ]


class Finishing:
    """Answers every batch with images made in one 2 s call."""

    def generate_sd_tiny(self, items: list[WorkItem]) -> list[Generation]:
        return finished(items, len(items))


def test_a_request_without_a_listener_learns_the_rate_from_its_finished_call() -> None:
    async def scenario() -> None:
        q = WorkQueue(GeneratorClient(Finishing()), max_request_work=1.0, max_wait_s=10)
        await q.admit([PARAMETERS, PARAMETERS]).run()
        assert q.rates.seconds_per_work(PARAMETERS) == pytest.approx(2.0 / (2 * UNIT))
        assert q.depth == 0

    asyncio.run(scenario())


def http_request(address: str = "10.0.0.1") -> Request:
    return Request({"type": "http", "client": (address, 1234), "headers": [], "state": {}})


def test_a_request_refused_by_the_work_rate_limit_leaves_nothing_queued(
    tiny_model: LoadedModel,
) -> None:
    async def scenario() -> None:
        settings = Settings(work_rate_limit="1/minute")
        gateway = Gateway(LoadedGenerator(tiny_model.info), settings, job_store(settings))
        large = ImageRequest(prompt="a cat", width=256, height=256, num_inference_steps=20)
        with pytest.raises(RateLimited):
            await gateway.admit(large, http_request())  # 2.6 megapixel-steps, over 1
        queue = gateway.queue(await gateway.model(None))
        assert queue.depth == 0 and queue.wait_s() == 0
        small = await gateway.admit(ImageRequest(prompt="a cat"), http_request())
        assert queue.depth == 1 and small.position == 0  # the refused one was not charged

    asyncio.run(scenario())


def test_an_interrupted_ticket_never_starts_or_stops_running() -> None:
    generator = SteppingGenerator()

    async def scenario() -> None:
        q = WorkQueue(GeneratorClient(generator), max_request_work=1.0, max_wait_s=10)
        early = q.admit([PARAMETERS])
        early.interrupt()  # before it runs: it never reaches the generator
        with pytest.raises(asyncio.CancelledError):
            await early.run()
        assert q.depth == 0 and generator.cancelled == []

        async def never_ending(items: list[WorkItem]) -> Any:
            generator.running.set()
            await asyncio.sleep(3600)

        q.client.generate = never_ending  # type: ignore[method-assign]
        late = q.admit([PARAMETERS])
        running = asyncio.create_task(late.run())
        await asyncio.wait_for(generator.running.wait(), 5)
        late.interrupt()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert generator.cancelled == late.ids and q.depth == 0

    asyncio.run(scenario())
