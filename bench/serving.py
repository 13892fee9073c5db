"""Serving benchmarks on the embedded model (64x64, 4 steps, fixed seed):

1. the anti-pattern baseline (bench/baseline_app.py loads the pipeline in its handler) against
   the service: p50 per-request latency of each over HTTP;
2. overhead: p50 of the service's /generate/image over HTTP against the bare in-process
   pipeline call with the same parameters, and their ratio;
3. memory: resident memory of the service's processes after warm-up and after 200 requests.

    python -m bench.serving [--quick] [--json PATH]

Prints a table and writes JSON (default bench/results/serving.json). Requests are sequential
and on loopback; concurrency and batching are bench/batching.py's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.reporting import machine, report
from harness.servers import Server, bentoml_serve, running
from imagegen.engine.generation import PipelineRunner
from imagegen.engine.loading import load_model
from imagegen.parameters import resolve
from imagegen.schemas import ImageRequest
from models.recipes import SD_TINY
from models.store import ensure_built

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 4, "seed": 1}


def p50_seconds(server: Server, requests: int) -> float:
    latencies = []
    with httpx.Client(base_url=server.url, timeout=300) as client:
        for _ in range(requests):
            started = time.perf_counter()
            client.post("/generate/image", json=BODY).raise_for_status()
            latencies.append(time.perf_counter() - started)
    return statistics.median(latencies)


def bare_p50_seconds(requests: int) -> float:
    runner = PipelineRunner(load_model(ensure_built(SD_TINY)))
    parameters = resolve(ImageRequest.model_validate(BODY), runner.model.info)
    runner.generate(parameters)  # warm-up, as the service does
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        runner.generate(parameters)
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies)


def rss_mib(server: Server) -> float:
    """Resident memory of the server and every process it started."""
    root = psutil.Process(server.process.pid)
    processes = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in processes) / 2**20


def measure(quick: bool, workdir: Path) -> dict[str, Any]:
    latency_requests = 5 if quick else 30
    baseline_requests = 3 if quick else 10
    memory_requests = 20 if quick else 200
    result: dict[str, Any] = {"quick": quick, "parameters": BODY}

    # The service, auth off, defaults otherwise.
    with bentoml_serve(workdir / "service.log", api_keys="", model="sd-tiny") as service:
        result["service_rss_after_warmup_mib"] = round(rss_mib(service), 1)
        result["service_p50_ms"] = round(p50_seconds(service, latency_requests) * 1000, 1)
        p50_seconds(service, memory_requests - latency_requests)
        result["service_rss_after_requests_mib"] = round(rss_mib(service), 1)
        result["memory_requests"] = memory_requests

    model_path = str(ensure_built(SD_TINY).path)
    baseline = running(
        [sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--port", "{port}"],
        workdir / "baseline.log",
        env={"IMAGEGEN_BASELINE_MODEL_PATH": model_path},
        ready_path="/docs",
    )
    with baseline as server:
        result["baseline_p50_ms"] = round(p50_seconds(server, baseline_requests) * 1000, 1)

    result["bare_pipeline_p50_ms"] = round(bare_p50_seconds(latency_requests) * 1000, 1)
    result["http_overhead_ratio"] = round(
        result["service_p50_ms"] / result["bare_pipeline_p50_ms"], 2
    )
    result["baseline_over_service"] = round(result["baseline_p50_ms"] / result["service_p50_ms"], 2)
    result["machine"] = machine()
    return result


def table(result: dict[str, Any]) -> str:
    return (
        "| measure | value |\n|---|---|\n"
        f"| baseline p50 (load in handler) | {result['baseline_p50_ms']} ms |\n"
        f"| service p50 over HTTP | {result['service_p50_ms']} ms |\n"
        f"| baseline / service | {result['baseline_over_service']}x |\n"
        f"| bare in-process pipeline call p50 | {result['bare_pipeline_p50_ms']} ms |\n"
        f"| service over HTTP / bare call | {result['http_overhead_ratio']}x |\n"
        f"| service RSS after warm-up | {result['service_rss_after_warmup_mib']} MiB |\n"
        f"| service RSS after {result['memory_requests']} requests | "
        f"{result['service_rss_after_requests_mib']} MiB |\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests, to check it runs")
    parser.add_argument("--json", type=Path, default=Path("bench/results/serving.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as workdir:
        result = measure(args.quick, Path(workdir))
    return report(result, args.json, table)


if __name__ == "__main__":
    main()
