"""Jobs and cancellation, measured against real servers (sd-tiny on the machine at hand):

1. cancel latency: from `DELETE /jobs/{id}` (and from a synchronous client hanging up) to the
   pipeline taking its next work (the next job's first step), in ms and in steps of the
   cancelled generation;
2. the cost of progress: a pipeline call with the step callback and event publishing (to a
   watcher on an event loop, as in the generator service) against one without (in-process,
   256x256, 20 steps; median of paired ratios), and the preview's cost per event;
3. jobs against synchronous requests: images/s with 8 clients each, for small and medium
   images (medians of three alternated rounds);
4. the job store: `GET /jobs/{id}` p50, embedded store against Redis.

    python -m bench.jobs [--quick] [--json PATH]

Prints a table and writes JSON (default bench/results/jobs.json).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.reporting import machine, report
from harness.servers import Server, bentoml_serve, redis_server

# About 3 s on two CPU cores: long enough to cancel mid-way.
LONG = {"prompt": "a long one", "width": 256, "height": 256, "num_inference_steps": 100}
SMALL = {"prompt": "a small one", "width": 64, "height": 64, "num_inference_steps": 4}
MEDIUM = {"prompt": "a medium one", "width": 256, "height": 256, "num_inference_steps": 20}


def wait_for(client: httpx.Client, job_id: str, done: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if done(job):
            return job
        time.sleep(0.005)
    raise TimeoutError(f"job {job_id}")


def step_s(client: httpx.Client, job_id: str) -> float:
    """Seconds per step of a running job, from two readings of its progress."""
    first = wait_for(client, job_id, lambda job: job["progress"]["step"] >= 2)
    started = time.perf_counter()
    later = wait_for(
        client, job_id, lambda job: job["progress"]["step"] >= first["progress"]["step"] + 3
    )
    return (time.perf_counter() - started) / (later["progress"]["step"] - first["progress"]["step"])


def hang_up_after_1s(server: Server, hung_up: threading.Event) -> None:
    """A synchronous request for LONG whose client gives up after a second."""
    try:
        httpx.post(f"{server.url}/generate/image", json=LONG, timeout=1.0)
    except httpx.TimeoutException:
        hung_up.set()


def cancel_latency(server: Server, rounds: int, by: str) -> dict[str, float]:
    """``by`` "delete": DELETE a running job; "disconnect": a sync client hangs up."""
    latencies, in_steps = [], []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for _ in range(rounds):
            if by == "delete":
                long_id = client.post("/jobs", json=LONG).json()["id"]
                per_step = step_s(client, long_id)
                next_id = client.post("/jobs", json=SMALL).json()["id"]
                sent = time.time()
                client.delete(f"/jobs/{long_id}")
            else:
                hang_up = threading.Event()
                waiting = threading.Thread(target=hang_up_after_1s, args=(server, hang_up))
                waiting.start()
                time.sleep(0.5)
                submitted = client.post("/jobs", json=SMALL)
                assert submitted.status_code == 202, submitted.text
                next_id = submitted.json()["id"]
                hang_up.wait(30)
                sent = time.time()
                waiting.join()
                per_step = None
            taken = wait_for(client, next_id, lambda job: job["started_at"] is not None)
            wait_for(client, next_id, lambda job: job["status"] == "succeeded")
            latency = max(taken["started_at"] - sent, 0.0)
            latencies.append(latency * 1000)
            if per_step:
                in_steps.append(latency / per_step)
    result = {"p50_ms": round(statistics.median(latencies), 1), "max_ms": round(max(latencies), 1)}
    if in_steps:
        result["p50_steps"] = round(statistics.median(in_steps), 2)
        result["max_steps"] = round(max(in_steps), 2)
    return result


def progress_cost(repeats: int) -> dict[str, float]:
    """In-process: the same call with and without the step watch (one watcher listening)."""
    import asyncio

    import torch

    from imagegen.engine.generation import PipelineRunner, StepWatch, preview_png
    from imagegen.engine.loading import load_model
    from imagegen.engine.modes import mode_call
    from imagegen.parameters import resolve
    from imagegen.schemas import ImageRequest, WorkItem
    from models.recipes import SD_TINY
    from models.store import ensure_built

    runner = PipelineRunner(load_model(ensure_built(SD_TINY)))
    request = ImageRequest(prompt="a cat", width=256, height=256, num_inference_steps=20, seed=1)
    parameters = resolve(request, runner.model.info)
    item = WorkItem(id="bench", parameters=parameters, report=True)

    async def consume() -> None:  # a watcher on an event loop, as the generator service has
        async for _ in runner.tracker.stream():
            pass

    threading.Thread(target=asyncio.run, args=(consume(),), daemon=True).start()

    def call(watch: StepWatch | None) -> float:
        run = runner.model.pipeline
        started = time.perf_counter()
        runner._call(run, [parameters], mode_call(runner.model, [item]).arguments, watch)
        return time.perf_counter() - started

    call(None)  # warm-up
    # Paired and alternated: the machine's noise (about 10% between calls) is larger than
    # the cost measured, so the median of per-pair ratios is reported.
    plain, watched, ratios = [], [], []
    for _ in range(repeats):
        plain.append(call(None))
        watched.append(call(StepWatch(runner.tracker, [item], parameters.denoising_steps)))
        ratios.append(watched[-1] / plain[-1])
    latents = torch.randn(4, 32, 32)
    previews = []
    for _ in range(50):
        started = time.perf_counter()
        preview_png(latents)
        previews.append(time.perf_counter() - started)
    bare, with_progress = statistics.median(plain), statistics.median(watched)
    return {
        "bare_ms": round(bare * 1000, 1),
        "with_progress_ms": round(with_progress * 1000, 1),
        "overhead_percent": round((statistics.median(ratios) - 1) * 100, 2),
        "preview_ms_per_event": round(statistics.median(previews) * 1000, 3),
    }


def images_per_s(
    server: Server, clients: int, rounds: int, jobs: bool, body: dict[str, Any] = SMALL
) -> float:
    """Images made per second by ``clients`` clients, each making ``rounds`` requests, by
    synchronous requests or by jobs (submit, follow the event stream to its end, fetch)."""

    def one_client(_: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for _ in range(rounds):
                if not jobs:
                    client.post("/generate/image", json=body).raise_for_status()
                    continue
                job_id = client.post("/jobs", json=body).json()["id"]
                with client.stream("GET", f"/jobs/{job_id}/events") as events:
                    for _line in events.iter_lines():
                        pass
                client.get(f"/jobs/{job_id}/result").raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one_client, range(clients)))
    return clients * rounds / (time.perf_counter() - started)


def status_p50_ms(server: Server, requests: int) -> float:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        job_id = client.post("/jobs", json=SMALL).json()["id"]
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            client.get(f"/jobs/{job_id}").raise_for_status()
            latencies.append(time.perf_counter() - started)
    return round(statistics.median(latencies) * 1000, 2)


def measure(quick: bool, workdir: Path) -> dict[str, Any]:
    cancels, repeats = (2, 2) if quick else (20, 21)
    rounds, statuses = (2, 20) if quick else (12, 300)
    result: dict[str, Any] = {"quick": quick, "machine": machine()}
    with bentoml_serve(
        workdir / "memory.log", api_keys="", model="sd-tiny", max_concurrency="64"
    ) as server:
        result["cancel_by_delete"] = cancel_latency(server, cancels, "delete")
        result["cancel_by_disconnect"] = cancel_latency(server, cancels, "disconnect")
        images_per_s(server, 8, 1, jobs=False)  # warm-up, and the batcher learns
        result["throughput_8_clients"] = {}
        # Small images show the per-request cost (three requests and an event stream per
        # job against one request); medium ones, a generation that dominates it.
        medium_rounds = 1 if quick else 3
        for name, body, size_rounds in [
            ("64x64x4", SMALL, rounds),
            ("256x256x20", MEDIUM, medium_rounds),
        ]:
            sync, via_jobs = [], []
            for _ in range(1 if quick else 3):  # alternated: the machine's load drifts
                sync.append(images_per_s(server, 8, size_rounds, jobs=False, body=body))
                via_jobs.append(images_per_s(server, 8, size_rounds, jobs=True, body=body))
            result["throughput_8_clients"][name] = {
                "sync_images_per_s": round(statistics.median(sync), 2),
                "jobs_images_per_s": round(statistics.median(via_jobs), 2),
                "jobs_over_sync": round(statistics.median(via_jobs) / statistics.median(sync), 3),
            }
        result["status_p50_ms"] = {"memory": status_p50_ms(server, statuses)}
    with (
        redis_server(workdir / "redis.log") as redis,
        bentoml_serve(
            workdir / "redis-store.log",
            api_keys="",
            model="sd-tiny",
            max_concurrency="64",
            redis_url=redis.url,
        ) as server,
    ):
        result["status_p50_ms"]["redis"] = status_p50_ms(server, statuses)
    result["progress"] = progress_cost(repeats)
    return result


def table(result: dict[str, Any]) -> str:
    lines = [f"machine: {result['machine']}"]
    for by in ("delete", "disconnect"):
        row = result[f"cancel_by_{by}"]
        steps = f", {row['p50_steps']} steps (max {row['max_steps']})" if "p50_steps" in row else ""
        lines.append(f"cancel by {by}: p50 {row['p50_ms']} ms, max {row['max_ms']} ms{steps}")
    for name, t in result["throughput_8_clients"].items():
        lines.append(
            f"8 clients, {name}: sync {t['sync_images_per_s']} img/s, jobs "
            f"{t['jobs_images_per_s']} img/s ({t['jobs_over_sync']}x)"
        )
    s = result["status_p50_ms"]
    lines.append(f"GET /jobs/{{id}} p50: memory {s['memory']} ms, redis {s['redis']} ms")
    p = result["progress"]
    lines.append(
        f"progress: {p['bare_ms']} ms bare, {p['with_progress_ms']} ms with step events "
        f"({p['overhead_percent']}%); preview {p['preview_ms_per_event']} ms per event"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs")
    parser.add_argument("--quick", action="store_true", help="only check that it runs")
    parser.add_argument("--json", type=Path, default=Path("bench/results/jobs.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as workdir:
        return report(measure(args.quick, Path(workdir)), args.json, table)


if __name__ == "__main__":
    main(sys.argv[1:])
