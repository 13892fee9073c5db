"""Step caching (`cache`): how much faster, against how much it changes the image, per model.

For each model, one image per pipeline call through the service's own ``PipelineRunner``,
uncached then cached with the same seed, in turn (``--repeats`` pairs after a warm-up pair):
the median seconds of each, the speed-up, and the mean absolute difference between each
cached image and its uncached twin (0-255, per channel). For the demo model ``sd-shapes`` also
what ``bench.demo_model`` reads back from its images (background, colour and shape right, at
its default guidance), uncached and cached.

    python -m bench.caching [--quick] [--repeats N] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.demo_model import quality
from bench.reporting import machine, report
from imagegen.engine.generation import PipelineRunner
from imagegen.engine.loading import load_model
from imagegen.parameters import resolve
from imagegen.schemas import ImageRequest
from models.recipes import RECIPES, SD_SHAPES
from models.shapes import COLOURS, SHAPES
from models.store import ensure_built

# (recipe, size, steps): the demo model, the tiny test model and SD 1.5's architecture (random
# weights: speed only), then the transformer families' tiny ones (random weights: plumbing).
MODELS = [
    ("sd-shapes", 64, 20),
    ("sd-tiny", 64, 20),
    ("sd15-random", 128, 8),
    ("sd3-tiny", 64, 20),
    ("flux-tiny", 64, 20),
]


def timed(
    runner: PipelineRunner, size: int, steps: int, seed: int, cache: bool
) -> tuple[float, np.ndarray]:
    request = ImageRequest(
        prompt="a red circle on a blue background",
        width=size,
        height=size,
        num_inference_steps=steps,
        seed=seed,
        cache=cache,
    )
    parameters = resolve(request, runner.model.info)
    started = time.perf_counter()
    image = runner.generate(parameters).image
    return time.perf_counter() - started, np.asarray(image, dtype=np.float64)


def measure_model(name: str, size: int, steps: int, repeats: int, quick: bool) -> dict[str, Any]:
    runner = PipelineRunner(
        load_model(ensure_built(RECIPES[name])), max_batch_size=len(COLOURS) * len(SHAPES)
    )
    plain_s, cached_s, differences = [], [], []
    for seed in range(repeats + 1):
        plain_time, plain = timed(runner, size, steps, seed, cache=False)
        cached_time, cached = timed(runner, size, steps, seed, cache=True)
        if seed:  # the first pair warms up
            plain_s.append(plain_time)
            cached_s.append(cached_time)
            differences.append(float(np.abs(cached - plain).mean()))
    result: dict[str, Any] = {
        "model": name,
        "size": size,
        "steps": steps,
        "method": runner.model.info.step_cache,
        "uncached_s": round(statistics.median(plain_s), 4),
        "cached_s": round(statistics.median(cached_s), 4),
        "mean_abs_difference": round(statistics.mean(differences), 2),
    }
    result["speed_up"] = round(result["uncached_s"] / result["cached_s"], 2)
    if name == SD_SHAPES.name:
        guidance = runner.model.info.default_guidance_scale
        result["read_back"] = {
            "uncached": quality(runner, quick, guidance),
            "cached": quality(runner, quick, guidance, cache=True),
        }
    return result


def table(result: dict[str, Any]) -> str:
    rows = "".join(
        f"| {m['model']} | {m['size']}², {m['steps']} steps | {m['method']} | "
        f"{m['uncached_s']} | {m['cached_s']} | {m['speed_up']}x | {m['mean_abs_difference']} |\n"
        for m in result["models"]
    )
    shapes = next(m for m in result["models"] if "read_back" in m)["read_back"]
    scores = "".join(
        f"| {score} right | {shapes['uncached'][f'{score}_right']} | "
        f"{shapes['cached'][f'{score}_right']} |\n"
        for score in ("background", "colour", "shape")
    )
    return (
        "| model | size, steps | method | uncached s | cached s | speed-up | "
        "mean abs difference (0-255) |\n|---|---|---|---|---|---|---|\n"
        f"{rows}\n"
        f"| sd-shapes, read back ({shapes['uncached']['images']} images) | uncached | "
        f"cached |\n|---|---|---|\n{scores}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few images, to check it runs")
    parser.add_argument("--repeats", type=int, default=5, help="pairs per model")
    parser.add_argument("--json", type=Path, default=Path("bench/results/caching.json"))
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    models = [m for m in MODELS if m[0] in ("sd-shapes", "sd-tiny")] if args.quick else MODELS
    result = {
        "quick": args.quick,
        "repeats": repeats,
        "models": [measure_model(*model, repeats, args.quick) for model in models],
        "machine": machine(),
    }
    return report(result, args.json, table)


if __name__ == "__main__":
    main()
