"""The pipeline on an accelerator: iterations/s and seconds per image for each performance
switch, at 25 and 50 steps, batch 1 and 8.

On a GPU the default run is Stable Diffusion 1.5's architecture with random weights (store it
first with `python -m models build sd15-random`, or let the first run build it) at 512x512
in float16:

    python -m bench.gpu [--model NAME] [--steps 25 50] [--batches 1 8] [--repeats 3]
                        [--switches off compile ...] [--json PATH]
    python -m bench.gpu --quick      # sd-tiny at 64x64 on any device, to check that it runs

Each configuration loads the model the way the service does (`imagegen.engine.loading.load_model`
with the switch set as its setting), warms up every batch size (compiling it, with `compile`), then
times `--repeats` pipeline calls per (steps, batch) and keeps the median. it/s counts denoising
steps per second between the first and the last step's end (what diffusers' progress bar
shows); s/image is the whole call (text encoding, denoising, VAE decode) over the batch size.
Prints a table and writes JSON (default bench/results/gpu.json).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.reporting import machine, report
from imagegen.engine.loading import LoadedModel, load_model
from imagegen.settings import Settings
from models.store import find_model

# Each row: the service's settings for it. "off" is every switch off; the others turn one on.
SWITCHES: dict[str, dict[str, Any]] = {
    "off": {"channels_last": "off"},
    "channels_last": {"channels_last": "on"},
    "compile": {"channels_last": "off", "compile": "default"},
    "attention_slicing": {"channels_last": "off", "attention_slicing": True},
    "vae_slicing": {"channels_last": "off", "vae_slicing": True},
    "vae_tiling": {"channels_last": "off", "vae_tiling": True},
    "cpu_offload": {"channels_last": "off", "cpu_offload": True},
}
QUICK_SWITCHES = ("off", "channels_last", "attention_slicing", "vae_slicing")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_call(loaded: LoadedModel, size: int, steps: int, batch: int) -> tuple[float, float]:
    """(seconds of the whole call, denoising steps per second) for one pipeline call."""
    step_ends: list[float] = []

    def on_step_end(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> Any:
        synchronize()
        step_ends.append(time.perf_counter())
        return kwargs

    generators = [torch.Generator("cpu").manual_seed(seed) for seed in range(batch)]
    synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        loaded.pipeline(
            prompt=["a lighthouse on a cliff at sunset"] * batch,
            width=size,
            height=size,
            num_inference_steps=steps,
            generator=generators,
            callback_on_step_end=on_step_end,
        )
    synchronize()
    seconds = time.perf_counter() - started
    iterations_per_s = (len(step_ends) - 1) / (step_ends[-1] - step_ends[0])
    return seconds, iterations_per_s


def measure_switch(
    model: str, settings: Settings, size: int, steps: list[int], batches: list[int], repeats: int
) -> list[dict[str, Any]]:
    loaded = load_model(find_model(model), settings)
    for batch in batches:  # warm-up: lazy initialisation, and compilation per shape
        timed_call(loaded, size, 2, batch)
    rows = []
    for step_count in steps:
        for batch in batches:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            calls = [timed_call(loaded, size, step_count, batch) for _ in range(repeats)]
            seconds = statistics.median(call[0] for call in calls)
            rows.append(
                {
                    "steps": step_count,
                    "batch": batch,
                    "it_per_s": round(statistics.median(call[1] for call in calls), 2),
                    "s_per_image": round(seconds / batch, 4),
                    "peak_gpu_mib": (
                        round(torch.cuda.max_memory_allocated() / 2**20)
                        if torch.cuda.is_available()
                        else None
                    ),
                }
            )
    del loaded
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return rows


def measure(args: argparse.Namespace) -> dict[str, Any]:
    switches = args.switches or (QUICK_SWITCHES if args.quick else tuple(SWITCHES))
    if not torch.cuda.is_available():  # CPU offload needs CUDA
        switches = tuple(name for name in switches if name != "cpu_offload")
    dtype = "auto" if args.quick else "float16"
    results = {
        name: measure_switch(
            args.model,
            Settings(dtype=dtype, warmup=False, **SWITCHES[name]),
            args.size,
            args.steps,
            args.batches,
            args.repeats,
        )
        for name in switches
    }
    return {
        "quick": args.quick,
        "model": args.model,
        "size": args.size,
        "dtype": dtype,
        "repeats": args.repeats,
        "switches": results,
        "machine": machine(),
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        f"{result['model']}, {result['size']}x{result['size']}, {result['dtype']}, "
        f"median of {result['repeats']}, {result['machine']}\n",
        "| switch | steps | batch | it/s | s/image | peak GPU MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, measured in result["switches"].items():
        for row in measured:
            rows.append(
                f"| {name} | {row['steps']} | {row['batch']} | {row['it_per_s']} | "
                f"{row['s_per_image']} | {row['peak_gpu_mib'] or '-'} |"
            )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sd-tiny, 64x64, few steps")
    parser.add_argument("--model", help="stored model (default: sd15-random, sd-tiny with --quick)")
    parser.add_argument("--size", type=int, help="image side (default: 512, 64 with --quick)")
    parser.add_argument("--steps", type=int, nargs="+", help="step counts (default: 25 50)")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default: 1 8)")
    parser.add_argument("--repeats", type=int, help="timed calls per cell (default: 3)")
    parser.add_argument(
        "--switches", nargs="+", choices=SWITCHES, help="rows to measure (default: all)"
    )
    parser.add_argument("--json", type=Path, default=Path("bench/results/gpu.json"))
    args = parser.parse_args(argv)
    quick = args.quick
    args.model = args.model or ("sd-tiny" if quick else "sd15-random")
    args.size = args.size or (64 if quick else 512)
    args.steps = args.steps or ([3] if quick else [25, 50])
    args.batches = args.batches or ([1, 2] if quick else [1, 8])
    args.repeats = args.repeats or (1 if quick else 3)
    return report(measure(args), args.json, table)


if __name__ == "__main__":
    main()
