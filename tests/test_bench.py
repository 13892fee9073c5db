"""The benchmarks run (in a quick mode); their numbers are reported, never asserted."""

from __future__ import annotations

import json
from pathlib import Path

from bench import middleware_overhead


def test_middleware_overhead_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    middleware_overhead.main(["--requests", "20", "--rounds", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["requests_per_round"] == 20
    assert result["bare_us_median"] > 0 and result["stack_us_median"] > 0
