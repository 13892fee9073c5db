"""Jobs and cancellation over real HTTP against a real `bentoml serve` (two processes: the
progress stream and the cancel cross from the generator service)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from harness.servers import REPO, Server, bentoml_serve
from tests.conftest import API_KEY, AUTH, METRICS_AUTH

pytestmark = pytest.mark.e2e

LONG = {"prompt": "a long one", "width": 256, "height": 256, "num_inference_steps": 100}


def cancelled_images(server: Server) -> float:
    metrics = httpx.get(f"{server.url}/metrics", headers=METRICS_AUTH).text
    found = re.findall(r"^imagegen_cancelled_images_total\{[^}]*\} (\S+)$", metrics, re.M)
    return sum(float(value) for value in found)


def job_when(server: Server, job_id: str, ready: Callable[[dict[str, Any]], bool]) -> Any:
    """The job as ``server`` shows it, once ``ready`` holds (within 30 s)."""
    deadline = time.monotonic() + 30
    while not ready(job := httpx.get(f"{server.url}/jobs/{job_id}", headers=AUTH).json()):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def stepped(steps: int) -> Callable[[dict[str, Any]], bool]:
    return lambda job: job["progress"]["step"] >= steps


def wait_until_cancelled(server: Server, before: float, images: int = 1) -> None:
    deadline = time.monotonic() + 30
    while cancelled_images(server) < before + images:
        assert time.monotonic() < deadline, "the generator service never cancelled the image"
        time.sleep(0.1)


def test_a_job_streams_its_steps_and_serves_its_result(server: Server) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        accepted = client.post(
            "/jobs", json={"prompt": "a cat", "num_inference_steps": 6, "scheduler": "euler"}
        )
        assert accepted.status_code == 202
        job_id = accepted.json()["id"]
        frames: list[tuple[str, dict[str, Any]]] = []
        with client.stream("GET", f"/jobs/{job_id}/events") as stream:
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    frames.append((event, json.loads(line.removeprefix("data: "))))
        assert frames[0][0] == "queued" and frames[-1][0] == "succeeded"
        steps = [data["step"] for event, data in frames if event == "progress"]
        assert steps == list(range(7))
        result = client.get(f"/jobs/{job_id}/result")
        assert result.status_code == 200 and result.headers["content-type"] == "image/png"
        assert client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"


def test_a_client_that_hangs_up_cancels_its_generation(server: Server) -> None:
    before = cancelled_images(server)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/generate/image", json=LONG, headers=AUTH, timeout=1.0)
    wait_until_cancelled(server, before)
    # The model is free again: a small request is served.
    small = httpx.post(
        f"{server.url}/generate/image",
        json={"prompt": "a", "num_inference_steps": 1},
        headers=AUTH,
        timeout=60,
    )
    assert small.status_code == 200


def test_deleting_a_running_job_stops_it_in_the_generator_service(server: Server) -> None:
    before = cancelled_images(server)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        job_id = client.post("/jobs", json=LONG).json()["id"]
        job_when(server, job_id, stepped(2))
        job = client.delete(f"/jobs/{job_id}").json()
        assert job["status"] == "cancelled"
        wait_until_cancelled(server, before)


def client_command(server: Server, *args: str) -> list[str]:
    return [sys.executable, "-m", "imagegen.client", "generate", *args, "--url", server.url]


def test_the_command_line_client_saves_every_image(server: Server, tmp_path: Path) -> None:
    output = str(tmp_path / "cat.png")
    done = subprocess.run(
        client_command(server, "a cat", "-o", output, "--steps", "3", "--n", "2", "--key", API_KEY),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    saved = [tmp_path / "cat-0.png", tmp_path / "cat-1.png"]
    assert done.stdout.split() == [str(path) for path in saved]
    assert all(Image.open(path).format == "PNG" for path in saved)


def test_ctrl_c_in_the_command_line_client_cancels_its_job(server: Server, tmp_path: Path) -> None:
    before = cancelled_images(server)
    output = tmp_path / "never.png"
    args = ["a long one", "--steps", "100", "--width", "256", "--height", "256", "-o", str(output)]
    client = subprocess.Popen(
        client_command(server, *args),
        stderr=subprocess.PIPE,
        env={**os.environ, "IMAGEGEN_API_KEY": API_KEY},
        cwd=REPO,
        # As from a terminal: a test run started in the background (`cmd &`) ignores SIGINT,
        # and a child that inherits that never sees the Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert client.stderr is not None
    shown = b""
    deadline = time.monotonic() + 60
    while b"generating" not in shown:  # the progress bar has started moving
        assert time.monotonic() < deadline and client.poll() is None, shown
        shown += client.stderr.read1(4096)
    client.send_signal(signal.SIGINT)
    assert client.wait(timeout=30) == 130
    assert b": cancelled" in shown + client.stderr.read()
    wait_until_cancelled(server, before)
    assert not output.exists()


@pytest.fixture(scope="module")
def bounded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that lets no request wait more than an estimated second."""
    log = tmp_path_factory.mktemp("bounded") / "bentoml-serve.log"
    with bentoml_serve(log, max_queue_wait_s="1", warmup="false") as running:
        yield running


def test_a_small_request_behind_a_big_one_gets_a_prompt_503_and_readiness_says_so(
    bounded_server: Server,
) -> None:
    with httpx.Client(base_url=bounded_server.url, headers=AUTH, timeout=60) as client:
        job_id = client.post("/jobs", json=LONG).json()["id"]
        job_when(bounded_server, job_id, stepped(3))
        shed = client.post("/generate/image", json={"prompt": "a", "num_inference_steps": 1})
        assert shed.status_code == 503
        assert "of work, over this server's bound of 1 s" in shed.json()["error"]
        assert int(shed.headers["retry-after"]) >= 1
        assert client.get("/readyz").status_code == 503
        assert client.get("/livez").status_code == 200
        client.delete(f"/jobs/{job_id}")
        assert client.get("/readyz").status_code == 200
        small = client.post("/generate/image", json={"prompt": "a", "num_inference_steps": 1})
        assert small.status_code == 200
