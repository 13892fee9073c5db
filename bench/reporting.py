"""What every benchmark does with its result: JSON for machines, a table for people."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def machine() -> str:
    """The machine a result was measured on, as the docs quote it."""
    import torch  # only here: the benchmarks that need no model should not pay for it

    accelerator = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} cores, {accelerator}"


def report(
    result: dict[str, Any], path: Path, table: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Write ``result`` as JSON to ``path`` and print its table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(table(result))
    return result
