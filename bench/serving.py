"""Serving benchmarks on the embedded model (64x64, 4 steps, fixed seed):

1. the anti-pattern baseline (bench/baseline_app.py loads the pipeline in its handler) against
   the service: p50 per-request latency of each over HTTP;
2. overhead: the service's /generate/image over HTTP against the bare pipeline call with the
   same parameters, **interleaved**: one request (one kept-alive client), then one bare call in
   this process, in turn, ``--pairs`` pairs a round, ``--rounds`` rounds. The bare call alone
   drifts by tens of milliseconds over minutes on a shared two-core machine, so the two sides
   measured minutes apart do not tell a few milliseconds of overhead; paired, they do. Reported:
   each round's p50s and the median of its paired differences, and their spread over rounds;
3. memory: resident memory of the service's processes after warm-up and after 200 requests.

    python -m bench.serving [--quick] [--rounds N] [--pairs N] [--json PATH]

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


def interleaved(server: Server, rounds: int, pairs: int) -> list[dict[str, float]]:
    """Per round: the service's and the bare call's p50 and the median paired difference, in
    ms, from requests and bare calls made in turn."""
    runner = PipelineRunner(load_model(ensure_built(SD_TINY)))
    parameters = resolve(ImageRequest.model_validate(BODY), runner.model.info)
    runner.generate(parameters)  # warm-up, as the service does
    measured = []
    with httpx.Client(base_url=server.url, timeout=300) as client:
        client.post("/generate/image", json=BODY).raise_for_status()  # the connection, warm
        for _ in range(rounds):
            service, bare = [], []
            for _ in range(pairs):
                started = time.perf_counter()
                client.post("/generate/image", json=BODY).raise_for_status()
                service.append(time.perf_counter() - started)
                started = time.perf_counter()
                runner.generate(parameters)
                bare.append(time.perf_counter() - started)
            measured.append(
                {
                    "service_p50_ms": round(statistics.median(service) * 1000, 1),
                    "bare_p50_ms": round(statistics.median(bare) * 1000, 1),
                    "paired_difference_ms": round(
                        statistics.median(s - b for s, b in zip(service, bare, strict=True)) * 1000,
                        1,
                    ),
                }
            )
    return measured


def rss_mib(server: Server) -> float:
    """Resident memory of the server and every process it started."""
    root = psutil.Process(server.process.pid)
    processes = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in processes) / 2**20


def measure(quick: bool, rounds: int, pairs: int, workdir: Path) -> dict[str, Any]:
    baseline_requests = 3 if quick else 10
    memory_requests = 20 if quick else 200
    result: dict[str, Any] = {"quick": quick, "parameters": BODY, "pairs": pairs}

    # The service, auth off, defaults otherwise.
    with bentoml_serve(workdir / "service.log", api_keys="", model="sd-tiny") as service:
        result["service_rss_after_warmup_mib"] = round(rss_mib(service), 1)
        result["rounds"] = interleaved(service, rounds, pairs)
        p50_seconds(service, memory_requests - rounds * pairs)
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

    differences = [r["paired_difference_ms"] for r in result["rounds"]]
    result["service_p50_ms"] = statistics.median(r["service_p50_ms"] for r in result["rounds"])
    result["bare_pipeline_p50_ms"] = statistics.median(r["bare_p50_ms"] for r in result["rounds"])
    result["overhead_ms"] = {
        "median": statistics.median(differences),
        "min": min(differences),
        "max": max(differences),
    }
    result["baseline_over_service"] = round(result["baseline_p50_ms"] / result["service_p50_ms"], 2)
    result["machine"] = machine()
    return result


def table(result: dict[str, Any]) -> str:
    overhead = result["overhead_ms"]
    rounds = "".join(
        f"| round {k + 1} | {r['service_p50_ms']} | {r['bare_p50_ms']} | "
        f"{r['paired_difference_ms']} |\n"
        for k, r in enumerate(result["rounds"])
    )
    return (
        f"| interleaved, {result['pairs']} pairs a round | service p50 ms | bare p50 ms | "
        "service - bare, median of pairs, ms |\n|---|---|---|---|\n"
        f"{rounds}\n"
        f"service - bare: {overhead['median']} ms (median of rounds; "
        f"{overhead['min']} to {overhead['max']})\n\n"
        "| measure | value |\n|---|---|\n"
        f"| baseline p50 (load in handler) | {result['baseline_p50_ms']} ms |\n"
        f"| service p50 over HTTP (median of rounds) | {result['service_p50_ms']} ms |\n"
        f"| baseline / service | {result['baseline_over_service']}x |\n"
        f"| service RSS after warm-up | {result['service_rss_after_warmup_mib']} MiB |\n"
        f"| service RSS after {result['memory_requests']} requests | "
        f"{result['service_rss_after_requests_mib']} MiB |\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests, to check it runs")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of interleaved pairs")
    parser.add_argument("--pairs", type=int, default=24, help="request/bare-call pairs a round")
    parser.add_argument("--json", type=Path, default=Path("bench/results/serving.json"))
    args = parser.parse_args(argv)
    rounds, pairs = (1, 3) if args.quick else (args.rounds, args.pairs)
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as workdir:
        result = measure(args.quick, rounds, pairs, Path(workdir))
    return report(result, args.json, table)


if __name__ == "__main__":
    main()
