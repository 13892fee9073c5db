"""The work queues' Prometheus gauges, labelled by model (what the autoscaler scales on), and
`/metrics`' text: every process's metrics."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import prometheus_client
from prometheus_client import multiprocess


@cache
def _gauges() -> tuple[prometheus_client.Gauge, prometheus_client.Gauge, prometheus_client.Gauge]:
    # Created on first use, after BentoML has set up prometheus_client's multiprocess mode.
    depth = prometheus_client.Gauge(
        "imagegen_queue_depth",
        "Generations (requests and jobs) admitted and not yet finished.",
        labelnames=["model"],
        multiprocess_mode="livesum",
    )
    queued = prometheus_client.Gauge(
        "imagegen_queued_work",
        "Work admitted and not yet done, in megapixel-steps.",
        labelnames=["model"],
        multiprocess_mode="livesum",
    )
    wait = prometheus_client.Gauge(
        "imagegen_estimated_wait_seconds",
        "Estimated seconds until the admitted work is done (queued work x measured seconds "
        "per unit): what the autoscaler scales on.",
        labelnames=["model"],
        multiprocess_mode="livemax",
    )
    return depth, queued, wait


@cache
def _labelled(model: str) -> list[Any]:
    """A model's three gauges, labelled once: ``labels`` costs more than the ``set`` that
    follows it, and a queue reports at every request's admission and end."""
    return [gauge.labels(model=model) for gauge in _gauges()]


def report_queue(model: str, depth: int, queued_work: float, wait_s: float) -> None:
    depth_gauge, queued_gauge, wait_gauge = _labelled(model)
    depth_gauge.set(depth)
    queued_gauge.set(queued_work)
    wait_gauge.set(wait_s)


def exposition() -> bytes:
    """Every process's metrics in Prometheus' text format: `bentoml serve` runs the services
    as processes that share ``PROMETHEUS_MULTIPROC_DIR``; in one process, its own."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return prometheus_client.generate_latest()
    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return prometheus_client.generate_latest(registry)
