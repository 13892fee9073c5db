"""Cross-request batching: images/s at 1, 4, 8 and 16 concurrent clients, batching on and off.

Each setting gets its own `bentoml serve` (auth off, concurrency limit above the client count);
the same requests (embedded model, 64x64, 4 steps) are sent to both. Each client sends its
requests one after another; throughput is the images answered over the wall time of the
round, after a warm-up round that also lets BentoML's dispatcher fit its latency model.

    python -m bench.batching [--quick] [--batch-size N] [--json PATH]

Prints a table and writes JSON (default bench/results/batching.json).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.reporting import machine, report
from harness.servers import Server, bentoml_serve

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 4}
CLIENTS = (1, 4, 8, 16)


def client_latencies(server: Server, client: int, requests: int) -> list[float]:
    """One client's requests, in sequence; each its own seed."""
    latencies = []
    with httpx.Client(base_url=server.url, timeout=300) as http:
        for k in range(requests):
            started = time.perf_counter()
            body = {**BODY, "seed": client * 1000 + k}
            http.post("/generate/image", json=body).raise_for_status()
            latencies.append(time.perf_counter() - started)
    return latencies


def round_of(server: Server, clients: int, requests_per_client: int) -> dict[str, float]:
    with ThreadPoolExecutor(max_workers=clients) as pool:
        started = time.perf_counter()
        per_client = list(
            pool.map(lambda c: client_latencies(server, c, requests_per_client), range(clients))
        )
        elapsed = time.perf_counter() - started
    latencies = [latency for client in per_client for latency in client]
    return {
        "images_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
    }


def measure_server(
    workdir: Path, batch_size: int, clients: tuple[int, ...], requests: int
) -> dict[str, dict[str, float]]:
    log = workdir / f"batch-{batch_size}.log"
    with bentoml_serve(
        log,
        api_keys="",
        model="sd-tiny",
        max_batch_size=str(batch_size),
        max_concurrency="64",
    ) as server:
        round_of(server, max(clients), 2)  # warm-up
        return {str(n): round_of(server, n, max(requests // n, 2)) for n in clients}


def measure(quick: bool, batch_size: int, workdir: Path) -> dict[str, Any]:
    clients = (1, 4) if quick else CLIENTS
    requests = 8 if quick else 64  # per round, split across the clients
    return {
        "quick": quick,
        "parameters": BODY,
        "requests_per_round": requests,
        "max_batch_size": batch_size,
        "off": measure_server(workdir, 1, clients, requests),
        "on": measure_server(workdir, batch_size, clients, requests),
        "machine": machine(),
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        "| clients | batching off: images/s | p50 | "
        f"batching on (max {result['max_batch_size']}): images/s | p50 | on / off |",
        "|---|---|---|---|---|---|",
    ]
    for clients, off in result["off"].items():
        on = result["on"][clients]
        rows.append(
            f"| {clients} | {off['images_per_s']} | {off['p50_ms']} ms | "
            f"{on['images_per_s']} | {on['p50_ms']} ms | "
            f"{on['images_per_s'] / off['images_per_s']:.2f}x |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests, to check it runs")
    parser.add_argument("--batch-size", type=int, default=8, help="max batch size when on")
    parser.add_argument("--json", type=Path, default=Path("bench/results/batching.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as workdir:
        result = measure(args.quick, args.batch_size, Path(workdir))
    return report(result, args.json, table)


if __name__ == "__main__":
    main()
