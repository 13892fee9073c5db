"""What hires fix and the upscalers cost, in-process (``PipelineRunner`` and ``Upscalers``, the
service's own paths): seconds per image of hires fix at 2x against a plain generation at the
final size, and each upscaler's seconds per megapixel of output.

Hires fix draws at ``--size`` with ``--steps``, enlarges, and redraws at twice the size with
the same steps at strength 0.7 (so 70% of them); the plain generation draws at twice the size
with all the steps. An upscaler enlarges a ``--size`` image 4x, after one warm-up call. The
last table converts a network's seconds into the unit of work (``imagegen.work``: one
denoiser evaluation over a megapixel), with the model's own seconds per unit measured by its
plain generation: the figure ``imagegen.upscalers.MODEL_UPSCALE_WORK`` estimates.

    python -m bench.upscalers [--model sd-shapes] [--size 64] [--steps 20] [--repeats 5]
                              [--network esrgan-x4-random] [--json PATH] [--quick]
    python -m bench.upscalers --model sd15-random --size 512 --steps 10 --repeats 2

``--model`` names a recipe (built on first use) or a stored model; ``--network`` an upscaler
recipe (``esrgan-x4-random``: Real-ESRGAN x4plus's architecture, random weights).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import PIL.Image

from bench.reporting import generation_options, machine, report
from imagegen.engine.generation import PipelineRunner
from imagegen.engine.loading import load_model
from imagegen.engine.upscaling import Upscalers
from imagegen.parameters import resolve
from imagegen.schemas import ImageRequest
from imagegen.upscalers import MODEL_UPSCALE_WORK
from imagegen.work import image_work
from models.recipes import SD_SHAPES
from models.store import find_model
from models.upscalers import ESRGAN_TINY_X4, ESRGAN_X4_RANDOM, UPSCALER_RECIPES, ensure_upscaler

PROMPT = "a red square on a blue background"
STRENGTH = 0.7


def median_seconds(call: Any, repeats: int) -> float:
    """The median of ``repeats`` calls after one to warm up."""
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def generations(
    runner: PipelineRunner, size: int, steps: int, repeats: int, upscalers: list[str]
) -> dict[str, dict[str, Any]]:
    """Seconds per image: plain at 2x, then hires fix with each upscaler."""
    cases: dict[str, dict[str, Any]] = {"plain": {"width": 2 * size, "height": 2 * size}}
    for name in upscalers:
        cases[f"hires, {name}"] = {
            "width": size,
            "height": size,
            "hires": {"scale": 2, "upscaler": name, "strength": STRENGTH},
        }
    rows = {}
    for label, fields in cases.items():
        request = ImageRequest(prompt=PROMPT, num_inference_steps=steps, seed=1, **fields)
        parameters = resolve(request, runner.model.info)
        seconds = median_seconds(lambda p=parameters: runner.generate(p), repeats)
        rows[label] = {"s_per_image": round(seconds, 3), "work": round(image_work(parameters), 3)}
    return rows


def upscaling(upscalers: Upscalers, size: int, repeats: int, names: list[str]) -> dict[str, Any]:
    """Seconds per output megapixel of a ``size`` image enlarged 4x."""
    image = PIL.Image.new("RGB", (size, size), (30, 90, 200))
    out = (4 * size, 4 * size)
    rows = {}
    for name in names:
        seconds = median_seconds(lambda n=name: upscalers.image(image, out, n), repeats)
        rows[name] = {"s_per_megapixel": round(seconds / (out[0] * out[1] / 1e6), 3)}
    return rows


def run(model: str, size: int, steps: int, repeats: int, network: str) -> dict[str, Any]:
    networks = list(dict.fromkeys([ESRGAN_TINY_X4.name, network]))
    stored = [ensure_upscaler(UPSCALER_RECIPES[name]) for name in networks]
    upscalers = Upscalers(stored, "auto")  # the device the model goes to (IMAGEGEN_DEVICE)
    runner = PipelineRunner(load_model(find_model(model)), upscalers=upscalers)
    rows = generations(runner, size, steps, repeats, ["Latent", "Lanczos", network])
    plain = rows["plain"]
    seconds_per_unit = plain["s_per_image"] / plain["work"]
    per_megapixel = upscaling(upscalers, size, repeats, ["Lanczos", *networks])
    measured = per_megapixel[network]["s_per_megapixel"] / seconds_per_unit
    return {
        "machine": machine(),
        "model": runner.model.tag,
        "size": size,
        "steps": steps,
        "repeats": repeats,
        "generations": rows,
        "upscalers": per_megapixel,
        "network": network,
        "seconds_per_unit": round(seconds_per_unit, 4),
        "network_work_per_megapixel": round(measured, 2),
        "charged_work_per_megapixel": MODEL_UPSCALE_WORK,
    }


def table(result: dict[str, Any]) -> str:
    size, steps = result["size"], result["steps"]
    lines = [
        f"{result['model']}: {2 * size}x{2 * size}, {steps} steps, hires fix from "
        f"{size}x{size} at strength {STRENGTH}; median of {result['repeats']} "
        f"({result['machine']})",
        "",
        "| generation | s/image | work charged |",
        "|---|---|---|",
    ]
    for label, row in result["generations"].items():
        lines.append(f"| {label} | {row['s_per_image']} | {row['work']} |")
    lines += [
        "",
        f"Upscaling a {size}x{size} image 4x:",
        "",
        "| upscaler | s per output megapixel |",
        "|---|---|",
    ]
    for name, row in result["upscalers"].items():
        lines.append(f"| {name} | {row['s_per_megapixel']} |")
    lines.append(
        f"\n{result['network']} costs {result['network_work_per_megapixel']} units of work per "
        f"output megapixel at {result['model']}'s {result['seconds_per_unit']} s per unit; "
        f"the service charges {result['charged_work_per_megapixel']} (MODEL_UPSCALE_WORK)."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.upscalers", description=__doc__)
    generation_options(parser, SD_SHAPES.name, 64, 20, 5)
    parser.add_argument("--network", default=ESRGAN_X4_RANDOM.name, choices=UPSCALER_RECIPES)
    parser.add_argument("--json", type=Path, default=Path("bench/results/upscalers.json"))
    parser.add_argument("--quick", action="store_true", help="1 repeat of 4 steps, tiny network")
    args = parser.parse_args(argv)
    steps, repeats = (4, 1) if args.quick else (args.steps, args.repeats)
    network = ESRGAN_TINY_X4.name if args.quick else args.network
    return report(run(args.model, args.size, steps, repeats, network), args.json, table)


if __name__ == "__main__":
    main()
