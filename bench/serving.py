"""Serving benchmarks on the embedded model (64x64, 4 steps, fixed seed):

1. the anti-pattern baseline (bench/baseline_app.py loads the pipeline in its handler) against
   the service: p50 per-request latency of each over HTTP;
2. overhead: the service's /generate/image over HTTP against the bare pipeline call with the
   same parameters, **interleaved**: one request (one kept-alive client), then one bare call in
   this process, in turn, ``--pairs`` pairs a round, ``--rounds`` rounds. The bare call alone
   drifts by tens of milliseconds over minutes on a shared two-core machine, so the two sides
   measured minutes apart do not tell a few milliseconds of overhead; paired, they do. Each
   side starts on quiet cores (a pause before it, :data:`QUIET_S`), and each round is made
   back to back too. Reported: each round's p50s and the median of its paired differences,
   and their spread over rounds, both ways;
3. where the difference goes: the median of each stage over those requests, from the
   ``Server-Timing`` each answer carries (spans measured in the process that ran them) and the
   client's own clock, beside the bare call's set-up, pipeline and decode; each side's time
   outside its pipeline call; and the floor, a request with no work (``GET /livez``)
   alternated with bare calls the same way, beside the same to a raw ASGI app on uvicorn
   (bench/floor_app.py: what any Python HTTP server pays);
4. a lone client, batching on against off: two services started together (IMAGEGEN_MAX_BATCH_SIZE
   8 and 1), asked in turn from their first request on, each request's latency paired by its
   number (adaptive batching must not hold a lone request at any point after start);
5. memory: resident memory of the service's processes after warm-up and after 200 requests.

    python -m bench.serving [--quick] [--rounds N] [--pairs N] [--lone N] [--json PATH]

Prints a table and writes JSON (default bench/results/serving.json). Requests are sequential
and on loopback; concurrency and batching are bench/batching.py's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
LONE_WINDOW = 20
# The pause before each timed request or bare call, outside its time, so that each side starts
# on quiet cores. libgomp's worker threads spin for about 10 ms after a parallel region ends
# (GOMP_SPINCOUNT's default), so a side started at once after the other side's pipeline call
# shares a core with that call's spinning worker, and its own pipeline loses 1.5-2.3 ms to it
# (docs/benchmarks.md). A deployment's one generator meets no such neighbour: its own worker's
# spin, inside the request, still counts. Back to back is measured too, and reported beside.
QUIET_S = 0.02
# The stages of a request, in the order it meets them, and how each is had from one answer's
# measures: the client's latency and its Server-Timing entries, in ms.
STAGES: dict[str, Callable[[dict[str, float]], float]] = {
    "HTTP outside the timing middleware (client, uvicorn, BentoML's layers, "
    "the outer five middlewares)": lambda m: m["client"] - m["total"],
    "middlewares inside, validation, handler": lambda m: (
        m["total"] - m["admission"] - m["queue"] - m["inference"] - m["encode"]
    ),
    "admission (model, parameters, work, queue)": lambda m: m["admission"],
    "hop both ways (pickled frames on the local socket, the generator's queue)": lambda m: m["hop"],
    "set-up in the generator (prompt check, scheduler, thread)": lambda m: m["setup"],
    "pipeline: denoising": lambda m: m["inference"] - m["decode"],
    "pipeline: decode": lambda m: m["decode"],
    "encode (PNG, response)": lambda m: m["encode"],
}


def p50_seconds(server: Server, requests: int) -> float:
    latencies = []
    with httpx.Client(base_url=server.url, timeout=300) as client:
        for _ in range(requests):
            started = time.perf_counter()
            client.post("/generate/image", json=BODY).raise_for_status()
            latencies.append(time.perf_counter() - started)
    return statistics.median(latencies)


def server_timing(headers: Mapping[str, str]) -> dict[str, float]:
    """``Server-Timing``'s entries, in ms, by name."""
    entries = (entry.split(";dur=") for entry in headers["server-timing"].split(", "))
    return {name: float(duration) for name, duration in entries}


class LeanClient:
    """One kept-alive connection through the standard library's ``http.client``: the least a
    client adds, so that the fixed cost is the service's. (httpx adds about 0.7 ms a request
    more on cpu-2: ``--client httpx`` measures with it.)"""

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        host = parsed.hostname or "127.0.0.1"
        self.connection = http.client.HTTPConnection(host, parsed.port, timeout=300)

    def post(self, path: str, body: dict[str, Any]) -> Mapping[str, str]:
        """The answer's headers, once its body is read; raises unless it is a 200."""
        headers = {"Content-Type": "application/json"}
        self.connection.request("POST", path, body=json.dumps(body), headers=headers)
        return self._answer(path)

    def get(self, path: str) -> Mapping[str, str]:
        self.connection.request("GET", path)
        return self._answer(path)

    def _answer(self, path: str) -> Mapping[str, str]:
        response = self.connection.getresponse()
        content = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}: {content[:200]!r}")
        return {name.lower(): value for name, value in response.getheaders()}

    def close(self) -> None:
        self.connection.close()


class HttpxClient:
    """The same through an ``httpx.Client``, for comparison."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=300)

    def post(self, path: str, body: dict[str, Any]) -> Mapping[str, str]:
        return self.client.post(path, json=body).raise_for_status().headers

    def get(self, path: str) -> Mapping[str, str]:
        return self.client.get(path).raise_for_status().headers

    def close(self) -> None:
        self.client.close()


CLIENTS: dict[str, type[LeanClient | HttpxClient]] = {
    "http.client": LeanClient,
    "httpx": HttpxClient,
}


def interleaved(
    server: Server, floor: Server, rounds: int, pairs: int, client_name: str
) -> dict[str, Any]:
    """Per round, each way (each side started on quiet cores; back to back): the service's
    and the bare call's p50 and the median paired difference, in ms, from requests and bare
    calls made in turn; on quiet cores also the median of each stage, the bare call's own
    included, and each side's median time outside its pipeline call, beside an empty
    request's, to the service and to ``floor`` (bench/floor_app.py)."""
    runner = PipelineRunner(load_model(ensure_built(SD_TINY)))
    parameters = resolve(ImageRequest.model_validate(BODY), runner.model.info)
    runner.generate(parameters)  # warm-up, as the service does
    measured: dict[str, list[dict[str, float]]] = {"quiet": [], "back_to_back": []}
    answers, bare_calls, bare_outside = [], [], []
    client, floor_client = (CLIENTS[client_name](s.url) for s in (server, floor))
    try:
        client.post("/generate/image", BODY)  # the connection, warm
        for _ in range(rounds):
            for way, pause in (("quiet", QUIET_S), ("back_to_back", 0.0)):
                service, bare = [], []
                for _ in range(pairs):
                    time.sleep(pause)
                    started = time.perf_counter()
                    headers = client.post("/generate/image", BODY)
                    service.append(time.perf_counter() - started)
                    time.sleep(pause)
                    started = time.perf_counter()
                    bare_call = runner.generate(parameters)
                    bare.append(time.perf_counter() - started)
                    if way == "quiet":
                        answers.append({**server_timing(headers), "client": service[-1] * 1000})
                        bare_calls.append(bare_call)
                        bare_outside.append(bare[-1] - (bare_call.finished - bare_call.started))
                measured[way].append(
                    {
                        "service_p50_ms": round(statistics.median(service) * 1000, 1),
                        "bare_p50_ms": round(statistics.median(bare) * 1000, 1),
                        "paired_difference_ms": round(
                            statistics.median(s - b for s, b in zip(service, bare, strict=True))
                            * 1000,
                            1,
                        ),
                    }
                )
        # The floor under all of it: a request with no work (GET /livez: the connection,
        # uvicorn, BentoML's layers and the middlewares), alternated with bare calls the same
        # way, so that it too meets a process whose caches the other side's pipeline has had;
        # and under that, the same request to an app that does nothing.
        floor_client.get("/")  # the connection, warm
        empty: dict[str, list[float]] = {"/livez": [], "/": []}
        for _ in range(pairs):
            for path, requester in (("/livez", client), ("/", floor_client)):
                runner.generate(parameters)
                time.sleep(QUIET_S)
                started = time.perf_counter()
                requester.get(path)
                empty[path].append((time.perf_counter() - started) * 1000)
    finally:
        client.close()
        floor_client.close()
    stages = {name: median_ms(stage(m) for m in answers) for name, stage in STAGES.items()}
    stages |= {
        "bare call: set-up": median_ms((g.started - g.received) * 1000 for g in bare_calls),
        "bare call: denoising": median_ms((g.denoised - g.started) * 1000 for g in bare_calls),
        "bare call: decode": median_ms((g.finished - g.denoised) * 1000 for g in bare_calls),
    }
    # Each side's time outside its pipeline call: the same difference with the call's own
    # noise (two processes' torch, a millisecond or two apart on a shared host) left out.
    outside = {
        "service_ms": median_ms(m["client"] - m["inference"] for m in answers),
        "bare_ms": median_ms(seconds * 1000 for seconds in bare_outside),
    }
    outside["difference_ms"] = round(outside["service_ms"] - outside["bare_ms"], 2)
    outside["empty_request_ms"] = median_ms(empty["/livez"])
    outside["floor_app_ms"] = median_ms(empty["/"])
    return {
        "rounds": measured["quiet"],
        "back_to_back_rounds": measured["back_to_back"],
        "stages_ms": stages,
        "outside_pipeline": outside,
    }


def spread(rounds: list[dict[str, float]]) -> dict[str, float]:
    """The median of the rounds' paired differences, and their range."""
    differences = [r["paired_difference_ms"] for r in rounds]
    return {
        "median": statistics.median(differences),
        "min": min(differences),
        "max": max(differences),
    }


def median_ms(values: Iterable[float]) -> float:
    return round(statistics.median(values), 2)


def lone_client(requests: int, workdir: Path) -> list[dict[str, float]]:
    """A lone client's requests from the first on, to a service with batching on and one
    with it off, started together and asked in turn: each request's latency, in ms."""
    on = bentoml_serve(workdir / "on.log", api_keys="", model="sd-tiny", max_batch_size="8")
    off = bentoml_serve(workdir / "off.log", api_keys="", model="sd-tiny", max_batch_size="1")
    latencies = []
    with on as batching_on, off as batching_off:
        clients = [httpx.Client(base_url=s.url, timeout=300) for s in (batching_on, batching_off)]
        for number in range(1, requests + 1):
            pair = {"request": float(number)}
            sides = list(zip(("on_ms", "off_ms"), clients, strict=True))
            # Each goes first every other time: the one asked just after the other's pipeline
            # call meets a busier machine.
            for name, client in sides if number % 2 else reversed(sides):
                started = time.perf_counter()
                client.post("/generate/image", json=BODY).raise_for_status()
                pair[name] = round((time.perf_counter() - started) * 1000, 1)
            latencies.append(pair)
        for client in clients:
            client.close()
    return latencies


def uvicorn(
    app: str, log: Path, *options: str, env: dict[str, str] | None = None, ready_path: str = "/"
) -> AbstractContextManager[Server]:
    """``app`` served by uvicorn on a free port, with its defaults (uvloop, httptools: what
    `bentoml serve` runs the service on) and ``options``."""
    command = [sys.executable, "-m", "uvicorn", app, "--port", "{port}", *options]
    return running(command, log, env=env, ready_path=ready_path)


def rss_mib(server: Server) -> float:
    """Resident memory of the server and every process it started."""
    root = psutil.Process(server.process.pid)
    processes = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in processes) / 2**20


def measure(
    quick: bool, rounds: int, pairs: int, lone: int, client: str, workdir: Path
) -> dict[str, Any]:
    baseline_requests = 3 if quick else 10
    memory_requests = 20 if quick else 200
    result: dict[str, Any] = {"quick": quick, "parameters": BODY, "pairs": pairs, "client": client}

    # The service, auth off, defaults otherwise; beside it, the app that does nothing.
    floor_app = uvicorn(
        "bench.floor_app:app", workdir / "floor.log", "--lifespan", "off", "--no-access-log"
    )
    service_app = bentoml_serve(workdir / "service.log", api_keys="", model="sd-tiny")
    with service_app as service, floor_app as floor:
        result["service_rss_after_warmup_mib"] = round(rss_mib(service), 1)
        result |= interleaved(service, floor, rounds, pairs, client)
        p50_seconds(service, memory_requests - rounds * pairs)
        result["service_rss_after_requests_mib"] = round(rss_mib(service), 1)
        result["memory_requests"] = memory_requests

    result["lone_client"] = lone_pairs = lone_client(lone, workdir)
    # Single requests vary by a third on cpu-2 either way: means over twenty settle within a
    # few percent, and a hold (one request kept for two calls' time) still moves one by 5%.
    result["lone_client_windows"] = [
        {
            "requests": f"{first + 1}-{first + len(window)}",
            "on_mean_ms": round(statistics.mean(p["on_ms"] for p in window), 1),
            "off_mean_ms": round(statistics.mean(p["off_ms"] for p in window), 1),
        }
        for first in range(0, len(lone_pairs), LONE_WINDOW)
        for window in [lone_pairs[first : first + LONE_WINDOW]]
    ]
    slowest = max(lone_pairs, key=lambda p: p["on_ms"] - p["off_ms"])
    result["lone_client_slowest"] = slowest

    model_path = str(ensure_built(SD_TINY).path)
    baseline = uvicorn(
        "bench.baseline_app:app",
        workdir / "baseline.log",
        env={"IMAGEGEN_BASELINE_MODEL_PATH": model_path},
        ready_path="/docs",
    )
    with baseline as server:
        result["baseline_p50_ms"] = round(p50_seconds(server, baseline_requests) * 1000, 1)

    result["service_p50_ms"] = statistics.median(r["service_p50_ms"] for r in result["rounds"])
    result["bare_pipeline_p50_ms"] = statistics.median(r["bare_p50_ms"] for r in result["rounds"])
    result["overhead_ms"] = spread(result["rounds"])
    result["back_to_back_overhead_ms"] = spread(result["back_to_back_rounds"])
    result["baseline_over_service"] = round(result["baseline_p50_ms"] / result["service_p50_ms"], 2)
    result["machine"] = machine()
    return result


def table(result: dict[str, Any]) -> str:
    overhead, outside = result["overhead_ms"], result["outside_pipeline"]
    back = result["back_to_back_overhead_ms"]
    rounds = "".join(
        f"| round {k + 1} | {r['service_p50_ms']} | {r['bare_p50_ms']} | "
        f"{r['paired_difference_ms']} |\n"
        for k, r in enumerate(result["rounds"])
    )
    stages = "".join(f"| {name} | {ms} |\n" for name, ms in result["stages_ms"].items())
    windows = "".join(
        f"| {w['requests']} | {w['on_mean_ms']} | {w['off_mean_ms']} | "
        f"{w['on_mean_ms'] / w['off_mean_ms']:.3f}x |\n"
        for w in result["lone_client_windows"]
    )
    slowest = result["lone_client_slowest"]
    return (
        f"| interleaved, {result['pairs']} pairs a round, {result['client']}, each side on "
        "quiet cores | service p50 ms | "
        "bare p50 ms | "
        "service - bare, median of pairs, ms |\n|---|---|---|---|\n"
        f"{rounds}\n"
        f"service - bare: {overhead['median']} ms (median of rounds; "
        f"{overhead['min']} to {overhead['max']}); back to back, no pause before each side: "
        f"{back['median']} ms ({back['min']} to {back['max']}; rounds "
        f"{', '.join(str(r['paired_difference_ms']) for r in result['back_to_back_rounds'])})\n"
        f"outside the pipeline call: service {outside['service_ms']} ms, bare call "
        f"{outside['bare_ms']} ms, difference {outside['difference_ms']} ms; an empty request "
        f"(GET /livez) in the same alternation: {outside['empty_request_ms']} ms, and to an app "
        f"that does nothing (bench/floor_app.py): {outside['floor_app_ms']} ms\n\n"
        "| stage of a request (median) | ms |\n|---|---|\n"
        f"{stages}\n"
        "| a lone client from start, requests | batching on: mean ms | off: mean ms | on / off |\n"
        f"|---|---|---|---|\n{windows}\n"
        f"most on over off: request {slowest['request']:.0f}, {slowest['on_ms']} against "
        f"{slowest['off_ms']} ms\n\n"
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
    parser.add_argument("--lone", type=int, default=60, help="a lone client's requests")
    parser.add_argument(
        "--client", choices=sorted(CLIENTS), default="http.client", help="the interleaved client"
    )
    parser.add_argument("--json", type=Path, default=Path("bench/results/serving.json"))
    args = parser.parse_args(argv)
    rounds, pairs, lone = (1, 3, 3) if args.quick else (args.rounds, args.pairs, args.lone)
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as workdir:
        result = measure(args.quick, rounds, pairs, lone, args.client, Path(workdir))
    return report(result, args.json, table)


if __name__ == "__main__":
    main()
