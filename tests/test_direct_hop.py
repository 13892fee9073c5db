"""The hop's short way (imagegen/direct_hop.py): where its socket is, the generator's greedy
batching, and the framed round trip over a real Unix socket, failures and restarts included.
The served path is tested end to end by every generation of tests/test_e2e.py (the generator
logs where it listens: test_generations_take_the_short_way_round_bentoml_s_hop)."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from threading import current_thread
from typing import Any

import pytest

from imagegen.direct_hop import Batcher, DirectClient, DirectServer, Unreachable, socket_path
from imagegen.engine.compute import Lane
from imagegen.errors import Cancelled
from imagegen.hop import Failure
from imagegen.schemas import WorkItem
from imagegen.serving.remote import GeneratorClient


def runner_map(generator: str) -> str:
    return json.dumps({"imagegen-generator": generator, "imagegen": "http://127.0.0.1:3000"})


def test_the_socket_is_beside_bentoml_s_own_for_the_generator() -> None:
    assert socket_path(runner_map("file:///tmp/bentoml-uds-x/1.sock")) == Path(
        "/tmp/bentoml-uds-x/1.sock.direct"
    )
    # BentoML puts the generator on TCP without Unix sockets (BENTOML_NO_UDS, Windows):
    # then there is no short way, and none outside `bentoml serve` either.
    assert socket_path(runner_map("tcp://127.0.0.1:5000")) is None
    assert socket_path(json.dumps({"imagegen": "http://127.0.0.1:3000"})) is None
    assert socket_path("") is None


class Recorder:
    """A model's pipeline stand-in: records each call's items, answers one Failure per item
    naming it, and holds the first call until ``release`` is set."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, items: list[Any]) -> list[Any]:
        self.started.set()
        self.release.wait(5)
        self.calls.append(list(items))
        return [Failure(error="Cancelled", message=f"made {item}") for item in items]


def ask(batcher: Batcher, items: list[Any]) -> Future[Any]:
    """``items``' answer, and the name of the thread that gave it."""
    answer: Future[Any] = Future()
    batcher.submit(items, lambda outcomes: answer.set_result((outcomes, current_thread().name)))
    return answer


def answered(outcomes: list[Any]) -> list[str]:
    return [outcome.message.removeprefix("made ") for outcome in outcomes]


def test_a_lone_request_runs_at_once_and_those_behind_a_call_share_the_next() -> None:
    pipeline = Recorder()
    batcher = Batcher(Lane("model-m"), pipeline, max_batch_size=4)
    first = ask(batcher, ["a"])
    assert pipeline.started.wait(5)  # running alone, nothing waited
    behind = [ask(batcher, items) for items in (["b"], ["c", "d"])]
    pipeline.release.set()
    answers = [future.result(5) for future in (first, *behind)]
    assert pipeline.calls == [["a"], ["b", "c", "d"]]
    # Each request its own outcomes, in order, sent by the model's own thread as its call ends.
    assert [answered(outcomes) for outcomes, _ in answers] == [["a"], ["b"], ["c", "d"]]
    assert {thread for _, thread in answers} == {"model-m"}


def test_a_call_takes_whole_requests_up_to_the_batch_size() -> None:
    pipeline = Recorder()
    batcher = Batcher(Lane("model-m"), pipeline, max_batch_size=3)
    first = ask(batcher, ["a"])
    assert pipeline.started.wait(5)
    queued = [["b", "c"], ["d", "e"], ["f", "g", "h", "i"]]
    behind = [ask(batcher, items) for items in queued]
    pipeline.release.set()
    for future in (first, *behind):
        future.result(5)
    # Never a request split; one larger than the batch size runs alone (the runner splits it).
    assert pipeline.calls == [["a"], ["b", "c"], ["d", "e"], ["f", "g", "h", "i"]]


def served(path: Path, run: Any) -> DirectServer:
    server = DirectServer({"generate_m": Batcher(Lane("model-m"), run, max_batch_size=8)})
    server.start(path)
    return server


def made(items: list[Any]) -> list[Any]:
    return [Failure(error="Cancelled", message=f"made {item}") for item in items]


def test_concurrent_requests_each_get_their_own_answer_over_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "g.sock.direct"

    async def scenario() -> list[list[str]]:
        server = served(path, lambda items: (time.sleep(0.01), made(items))[1])
        client = DirectClient(path)
        try:
            asked = [[f"{k}-{j}" for j in range(k % 3 + 1)] for k in range(12)]
            answers = await asyncio.gather(*(client.generate("generate_m", a) for a in asked))
            assert [answered(answer) for answer in answers] == asked
            return [answered(a) for a in answers]
        finally:
            await client.close()
            server.close()

    asyncio.run(scenario())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # this user's processes only


def raising_once() -> Any:
    """A runner whose first call raises (a bug in it)."""
    failing = {"now": True}

    def run(items: list[Any]) -> list[Any]:
        if failing.pop("now", False):
            raise RuntimeError("a runner bug")
        return made(items)

    return run


def unpicklable_for_first(items: list[Any]) -> list[Any]:
    """A runner whose answer to ``first`` does not pickle (a lambda)."""
    return [(lambda: None) if item == "first" else made([item])[0] for item in items]


@pytest.mark.parametrize(
    "run",
    [raising_once(), unpicklable_for_first],
    ids=["a-failed-call", "an-answer-that-cannot-be-sent"],
)
def test_a_failed_request_fails_alone_and_the_queue_goes_on(tmp_path: Path, run: Any) -> None:
    path = tmp_path / "g.sock.direct"

    async def scenario() -> None:
        server = served(path, run)
        client = DirectClient(path)
        try:
            async with asyncio.timeout(10):  # unanswered, the first would hold up the second
                with pytest.raises(ConnectionError, match="failed the request"):
                    await client.generate("generate_m", ["first"])
                assert answered(await client.generate("generate_m", ["second"])) == ["second"]
        finally:
            await client.close()
            server.close()

    asyncio.run(scenario())


def test_a_generator_restart_fails_what_was_in_flight_and_is_reconnected(tmp_path: Path) -> None:
    path = tmp_path / "g.sock.direct"
    pipeline = Recorder()

    async def scenario() -> None:
        first = served(path, pipeline)
        client = DirectClient(path)
        in_flight = asyncio.create_task(client.generate("generate_m", ["lost"]))
        await asyncio.to_thread(pipeline.started.wait, 5)
        first.close()  # as when its process ends: its connections close with it
        with pytest.raises(ConnectionError, match="closed the connection"):
            await in_flight
        pipeline.release.set()
        second = served(path, made)  # its new process, on the same path
        try:
            assert answered(await client.generate("generate_m", ["again"])) == ["again"]
        finally:
            await client.close()
            second.close()

    asyncio.run(scenario())


def test_nothing_listening_is_unreachable_and_bentoml_s_way_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(Unreachable):
        asyncio.run(DirectClient(tmp_path / "none.sock.direct").generate("generate_m", ["x"]))

    class BentoMLClient:
        """What `bentoml.depends` gives a served dependency: `is_ready` and `to_async`."""

        def __init__(self) -> None:
            self.asked: list[Any] = []
            self.to_async = self

        async def is_ready(self, timeout: float) -> bool:
            return True

        async def generate_sd_tiny(self, items: list[WorkItem]) -> list[Any]:
            self.asked.append(items)
            return [Failure(error="Cancelled", message="by BentoML's way")]

    monkeypatch.setenv("BENTOML_RUNNER_MAP", runner_map(f"file://{tmp_path}/none.sock"))
    bentoml_client = BentoMLClient()
    client = GeneratorClient(bentoml_client)
    assert client.direct is not None
    item = WorkItem.model_construct(id="i", parameters=type("P", (), {"model": "sd-tiny"})())
    with pytest.raises(Cancelled, match="by BentoML's way"):
        asyncio.run(client.generate([item]))
    assert len(bentoml_client.asked) == 1
