"""Two `bentoml serve` replicas sharing a real Redis: any replica answers for any job."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.servers import Redis, Server, bentoml_serve, failed_start, redis_server, stop
from tests.conftest import AUTH, OTHER_AUTH
from tests.test_jobs_e2e import LONG, cancelled_images, job_when, stepped, wait_until_cancelled

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    with redis_server(tmp_path_factory.mktemp("redis") / "redis.log") as running:
        yield running


@pytest.fixture(scope="module")
def replicas(
    redis: Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    logs = tmp_path_factory.mktemp("replicas")
    settings = {"redis_url": redis.url, "warmup": "false"}
    with (
        bentoml_serve(logs / "a.log", **settings) as a,
        bentoml_serve(logs / "b.log", **settings) as b,
    ):
        yield a, b


def running(job: dict[str, Any]) -> bool:
    return bool(job["status"] == "running")


def stopped_while_running(
    redis: Redis, watcher: Server, tmp_path: Path, sig: signal.Signals
) -> str:
    """The id of a job that a third replica was running, as ``watcher`` saw, when it got
    ``sig`` (and stopped)."""
    settings = {"redis_url": redis.url, "warmup": "false"}
    with bentoml_serve(tmp_path / "third.log", **settings) as third:
        job_id: str = httpx.post(f"{third.url}/jobs", json=LONG, headers=AUTH).json()["id"]
        job_when(watcher, job_id, running)
        stop(third, sig)
    return job_id


def progress_steps(server: Server, job_id: str, headers: dict[str, str]) -> list[int]:
    steps, event = [], ""
    with httpx.stream(
        "GET", f"{server.url}/jobs/{job_id}/events", headers=headers, timeout=60
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "progress":
                steps.append(json.loads(line.removeprefix("data: "))["step"])
    assert event == "succeeded"
    return steps


def test_a_job_submitted_on_one_replica_is_followed_and_fetched_on_the_other(
    replicas: tuple[Server, Server],
) -> None:
    a, b = replicas
    body = {"prompt": "a cat", "num_inference_steps": 4, "scheduler": "euler", "seed": 5}
    job_id = httpx.post(f"{a.url}/jobs", json=body, headers=AUTH).json()["id"]
    assert progress_steps(b, job_id, AUTH) == [0, 1, 2, 3, 4]
    status = httpx.get(f"{b.url}/jobs/{job_id}", headers=AUTH).json()
    assert status["status"] == "succeeded"
    result = httpx.get(f"{b.url}/jobs/{job_id}/result", headers=AUTH)
    assert result.status_code == 200 and result.headers["x-seed"] == "5"
    # Resuming on the first replica after the second's event ids
    resumed = httpx.get(
        f"{a.url}/jobs/{job_id}/events", headers={**AUTH, "Last-Event-ID": "0-0"}
    ).text
    assert resumed.count("event: progress") == 5
    assert httpx.get(f"{b.url}/jobs/{job_id}", headers=OTHER_AUTH).status_code == 404


def test_a_cancel_sent_to_one_replica_stops_the_job_running_on_the_other(
    replicas: tuple[Server, Server],
) -> None:
    a, b = replicas
    before = cancelled_images(a)
    job_id = httpx.post(f"{a.url}/jobs", json=LONG, headers=AUTH).json()["id"]
    job_when(b, job_id, stepped(2))
    cancelled = httpx.delete(f"{b.url}/jobs/{job_id}", headers=AUTH, timeout=30).json()
    assert cancelled["status"] == "cancelled"
    wait_until_cancelled(a, before)  # in replica A's generator service


def test_a_job_whose_replica_died_ends_failed_not_running(
    redis: Redis, replicas: tuple[Server, Server], tmp_path: Path
) -> None:
    _, b = replicas
    # No shutdown: its leases simply stop being renewed.
    job_id = stopped_while_running(redis, b, tmp_path, signal.SIGKILL)
    job = job_when(b, job_id, lambda job: not running(job))
    assert job["status"] == "failed"
    assert "lease lapsed" in job["error"]


def test_an_unreachable_redis_stops_start_up_with_a_clear_message() -> None:
    output = failed_start(redis_url="redis://:secret@127.0.0.1:9/0")
    assert "IMAGEGEN_REDIS_URL: Redis at redis://127.0.0.1:9/0 does not answer" in output
    assert "secret" not in output


def test_sigterm_ends_a_running_job_failed_with_reason_shutdown(
    redis: Redis, replicas: tuple[Server, Server], tmp_path: Path
) -> None:
    _, b = replicas
    job_id = stopped_while_running(redis, b, tmp_path, signal.SIGTERM)
    job = httpx.get(f"{b.url}/jobs/{job_id}", headers=AUTH).json()
    assert job["status"] == "failed" and job["error"] == "shutdown"


def test_losing_redis_makes_the_job_paths_answer_503_not_wrong(tmp_path: Path) -> None:
    with (
        redis_server(tmp_path / "redis.log") as doomed_redis,
        bentoml_serve(tmp_path / "s.log", redis_url=doomed_redis.url, warmup="false") as server,
    ):
        job_id = httpx.post(f"{server.url}/jobs", json={"prompt": "a"}, headers=AUTH).json()["id"]
        doomed_redis.process.kill()
        doomed_redis.process.wait()
        for method, path in [("GET", f"/jobs/{job_id}"), ("POST", "/jobs")]:
            response = httpx.request(
                method, f"{server.url}{path}", json={"prompt": "a"}, headers=AUTH, timeout=30
            )
            assert response.status_code == 503
            assert response.json()["error"] == "The job store is unreachable; retry later."
            assert int(response.headers["retry-after"]) >= 1
        # Synchronous generation needs no store.
        image = httpx.post(
            f"{server.url}/generate/image", json={"prompt": "a"}, headers=AUTH, timeout=60
        )
        assert image.status_code == 200


def test_a_frozen_redis_makes_the_job_paths_answer_503_at_once(
    redis: Redis, replicas: tuple[Server, Server]
) -> None:
    """Was: Redis stopped (SIGSTOP) held `GET /jobs/{id}` and `POST /jobs` on both replicas
    for as long as it stayed frozen. Last in this module: it freezes the shared Redis."""
    a, _ = replicas
    job_id = httpx.post(f"{a.url}/jobs", json={"prompt": "a"}, headers=AUTH).json()["id"]
    redis.process.send_signal(signal.SIGSTOP)
    try:
        for server in replicas:
            for method, path in [("GET", f"/jobs/{job_id}"), ("POST", "/jobs")]:
                started = time.monotonic()
                response = httpx.request(
                    method, f"{server.url}{path}", json={"prompt": "a"}, headers=AUTH, timeout=30
                )
                assert response.status_code == 503, response.text
                assert int(response.headers["retry-after"]) >= 1
                assert time.monotonic() - started < 4
            image = httpx.post(
                f"{server.url}/generate/image", json={"prompt": "a"}, headers=AUTH, timeout=60
            )
            assert image.status_code == 200  # synchronous generation needs no store
    finally:
        redis.process.send_signal(signal.SIGCONT)
