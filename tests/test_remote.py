"""What the public service makes of the generator service's answers; fakes stand in for it."""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

import pytest
from _bentoml_sdk.io_models import IODescriptor
from bentoml.exceptions import BentoMLException
from PIL import Image

from imagegen.engine.catalog import generate_api
from imagegen.errors import GenerationFailed, OutOfMemory, Overloaded, ServiceError
from imagegen.hop import Failure, Generation
from imagegen.schemas import WorkItem
from imagegen.serving.remote import Generated, GeneratorClient
from tests.conftest import PARAMETERS

ITEM = WorkItem(id="item", parameters=PARAMETERS)


def generate(generator: Any, batch: list[WorkItem]) -> Generated:
    return asyncio.run(GeneratorClient(generator).generate(batch))


class Answering:
    """A generator service that answers every batch with ``outcomes`` or raises ``error``."""

    def __init__(self, outcomes: list[Any] | None = None, error: Exception | None = None):
        self.outcomes, self.error = outcomes, error

    def generate_sd_tiny(self, batch: list[WorkItem]) -> list[Any]:
        if self.error is not None:
            raise self.error
        assert self.outcomes is not None
        return self.outcomes


def generation(started: float, finished: float) -> Generation:
    image = Image.new("RGB", (64, 64))
    return Generation(
        image=image,
        parameters=PARAMETERS,
        received=started,
        started=started,
        denoised=finished,
        finished=finished,
        batch_size=2,
    )


def test_the_images_come_back_in_order_with_their_batch_size() -> None:
    outcomes = [generation(1.0, 2.0), generation(1.0, 2.0)]
    generated = generate(Answering(outcomes), [ITEM, ITEM])
    assert generated.generations == outcomes
    assert generated.batch_size == 2
    assert generated.timings.inference_ms == 1000.0


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (Failure(error="OutOfMemory", message="out of memory"), OutOfMemory),
        (Failure(error="GenerationFailed", message="failed"), GenerationFailed),
    ],
)
def test_a_failed_item_is_answered_as_its_error(
    failure: Failure, expected: type[ServiceError]
) -> None:
    with pytest.raises(expected, match=failure.message):
        generate(Answering([generation(1.0, 2.0), failure]), [ITEM, ITEM])


def test_a_shed_request_is_a_503_with_retry_after() -> None:
    shed = BentoMLException("process is overloaded", error_code=HTTPStatus.SERVICE_UNAVAILABLE)
    with pytest.raises(Overloaded) as caught:
        generate(Answering(error=shed), [ITEM])
    response = caught.value.to_response()
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0


@pytest.mark.parametrize(
    "error",
    [
        BentoMLException("boom /opt/secret", error_code=HTTPStatus.INTERNAL_SERVER_ERROR),
        ConnectionResetError("socket /opt/secret closed"),
    ],
)
def test_a_broken_hop_is_a_500_that_keeps_its_cause_in_the_log(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(GenerationFailed) as caught:
        generate(Answering(error=error), [ITEM])
    assert b"secret" not in caught.value.to_response().body
    assert "/opt/secret" in caplog.text


def test_failures_cross_processes_as_data() -> None:
    """Outcomes travel between the services through BentoML's serialisation: a Failure is
    plain data that rebuilds its error on the other side."""
    failure = Failure.of(OutOfMemory("out of memory"))
    rebuilt = Failure.model_validate(failure.model_dump())
    assert isinstance(rebuilt.exception(), OutOfMemory)


def test_the_generators_answers_declare_their_media_type() -> None:
    """Without one, BentoML derives it from the answer's JSON schema, generated anew for
    every response (3 ms on cpu-2)."""
    spec = IODescriptor.from_output(generate_api("sd-tiny:v1"))
    assert spec.mime_type() == "application/vnd.bentoml+pickle"
