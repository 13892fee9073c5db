"""What every benchmark does with its result: JSON for machines, a table for people."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def generation_options(
    parser: argparse.ArgumentParser, model: str, size: int, steps: int, repeats: int
) -> None:
    """The options of the benchmarks that time generations, with their defaults: ``--model``
    (a recipe, built on first use, or a stored model), ``--size``, ``--steps``,
    ``--repeats``."""
    parser.add_argument("--model", default=model)
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--repeats", type=int, default=repeats)


def machine() -> str:
    """The machine a result was measured on, as the docs quote it."""
    import torch  # only here: the benchmarks that need no model should not pay for it

    accelerator = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} cores, {accelerator}"


def commit() -> str:
    """The checked-out commit, ``+changes`` when the code differs from it (the docs may,
    while their figures are being made); ``unknown`` outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs", ":!*.md"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if changed else "")


def provenance() -> dict[str, str]:
    """Where a figure comes from: the command, the date and the commit (the docs quote it)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = f"python -m {spec.name}" if spec else f"python {sys.argv[0]}"
    command = " ".join([program, *sys.argv[1:]])
    return {
        "command": command,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": commit(),
    }


def report(
    result: dict[str, Any], path: Path, table: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Write ``result`` as JSON to ``path`` and print its table, then where it comes from."""
    source = provenance()
    result = {**result, "provenance": source}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(table(result))
    sys.stdout.write(
        f"\n`{source['command']}`, {source['date']}, commit {source['commit']}, "
        f"{result.get('machine') or machine()}\n"
    )
    return result
