"""What switching LoRA adapters costs: the first use of an adapter (read from the store and
injected into the pipeline's layers), a switch between adapters already loaded, turning them
off, and the time of a generation with and without one, through the service's own path
(``PipelineRunner``, whose pipeline thread activates each call's adapters).

    python -m bench.loras [--model sd-tiny] [--steps 4] [--repeats 20] [--json PATH] [--quick]

``--model`` names a stored model with stored adapters (``python -m models import-lora``); for
sd-tiny and sd15-random their two adapters built from code are stored first. Every figure is
a median; the first use is measured on a freshly loaded model each time.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml

from bench.reporting import machine, report
from imagegen.engine.generation import PipelineRunner
from imagegen.engine.loading import LoadedModel, load_model
from imagegen.parameters import resolve
from imagegen.schemas import ImageRequest, Lora
from models.adapters import ensure_adapter, stored_adapters
from models.recipes import ADAPTER_RECIPES, SD_TINY
from models.store import find_model


def median_ms(action: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


def loaded(stored: bentoml.Model, adapters: list[bentoml.Model]) -> LoadedModel:
    return load_model(stored, adapters=adapters)


def first_use_ms(stored: bentoml.Model, adapters: list[bentoml.Model], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        model = loaded(stored, adapters)
        lora = Lora(name=model.info.loras[0].tag)
        started = time.perf_counter()
        model.adapters.activate([lora])
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


def run(model: str, steps: int, repeats: int) -> dict[str, Any]:
    for recipe in ADAPTER_RECIPES.values():
        if recipe.base == model:
            ensure_adapter(recipe)
    stored = find_model(model)
    adapters = stored_adapters([stored.tag.name])
    if not adapters:
        raise SystemExit(f"{stored.tag} has no stored adapters: python -m models import-lora")
    runner = PipelineRunner(loaded(stored, adapters))
    tags = [adapter.tag for adapter in runner.model.info.loras]
    every = [Lora(name=tag) for tag in tags]
    for lora in every:  # all loaded from here on
        runner.model.adapters.activate([lora])
    switches = itertools.cycle([[lora] for lora in every] + [every])

    def switch() -> None:
        runner.model.adapters.activate(next(switches))

    def image(loras: list[dict[str, Any]]) -> Callable[[], Any]:
        request = ImageRequest(prompt="a cat", seed=1, num_inference_steps=steps, loras=loras)
        parameters = resolve(request, runner.model.info)
        return lambda: runner.generate(parameters)

    image([])()  # warm-up
    return {
        "machine": machine(),
        "model": runner.model.tag,
        "adapters": tags,
        "steps": steps,
        "repeats": repeats,
        "first_use_ms": first_use_ms(stored, adapters, max(3, repeats // 4)),
        "cached_switch_ms": median_ms(switch, repeats),
        "disable_ms": median_ms(lambda: runner.model.adapters.activate([]), repeats),
        "image_without_ms": median_ms(image([]), repeats),
        "image_with_one_ms": median_ms(image([{"name": tags[0]}]), repeats),
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        ("first use (load into the pipeline, activate)", result["first_use_ms"]),
        ("switch between loaded adapters", result["cached_switch_ms"]),
        ("turn adapters off", result["disable_ms"]),
        (f"image, no adapter ({result['steps']} steps)", result["image_without_ms"]),
        (f"image, one adapter ({result['steps']} steps)", result["image_with_one_ms"]),
    ]
    lines = [
        f"{result['model']}, adapters {', '.join(result['adapters'])}, median of "
        f"{result['repeats']} ({result['machine']})",
        "",
        "| what | ms |",
        "|---|---|",
        *(f"| {what} | {ms} |" for what, ms in rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.loras", description=__doc__)
    parser.add_argument("--model", default=SD_TINY.name)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=Path("bench/results/loras.json"))
    parser.add_argument("--quick", action="store_true", help="4 repeats")
    args = parser.parse_args(argv)
    repeats = 4 if args.quick else args.repeats
    return report(run(args.model, args.steps, repeats), args.json, table)


if __name__ == "__main__":
    main()
