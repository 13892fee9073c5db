"""How well the demo model ``sd-shapes`` draws what it is asked, and how fast.

For every shape colour, every other colour as background and every shape (8 x 7 x 3 prompts),
two seeds each, 20 steps, through the service's own generation path (``PipelineRunner``), at
guidance scale 1 (no guidance), the model's default (2) and 7 (SD 1.5's default). Each image
is read back by ``models.shapes.measure``: the background is the median colour of a 3-pixel
border; the shape, every pixel inside it more than 60 RGB units from that (its colour, their
median); its kind, the share of its bounding box it fills (cut-offs 0.87 and 0.70, halfway
between what the VAE's own reconstructions of drawn squares, circles and triangles fill).
Colours are named by the nearest of the palette's eight.

Also: seconds for one 64x64, 20-step image (default guidance, a pipeline call of its own;
median).

    python -m bench.demo_model [--quick] [--json PATH] [--grid PATH]

``--grid`` also draws the picture of what the model draws in docs/models.md.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from bench.reporting import machine, report
from imagegen.engine.generation import PipelineRunner
from imagegen.engine.loading import load_model
from imagegen.hop import Failure
from imagegen.parameters import resolve
from imagegen.schemas import ImageRequest, WorkItem
from models.recipes import SD_SHAPES
from models.shapes import COLOURS, SHAPES, caption, measure
from models.store import ensure_built

SEEDS = (1, 2)
GUIDANCE = (1.0, 7.0)  # besides the model's default
STEPS = 20
SCORES = ("background", "colour", "shape")


def prompts(quick: bool) -> list[tuple[str, str, str]]:
    """(colour, shape, background) for every pair of different colours and every shape."""
    everything = [
        (colour, shape, background)
        for colour, background in itertools.permutations(COLOURS, 2)
        for shape in SHAPES
    ]
    return everything[::28] if quick else everything


def draw_all(
    runner: PipelineRunner,
    asked: Iterable[tuple[str, str, str]],
    guidance: float,
    seed: int,
    cache: bool = False,
) -> list[Image.Image]:
    items = [
        WorkItem(
            id=uuid.uuid4().hex,
            parameters=resolve(
                ImageRequest(
                    prompt=caption(*spec),
                    num_inference_steps=STEPS,
                    guidance_scale=guidance,
                    seed=seed,
                    cache=cache,
                ),
                runner.model.info,
            ),
        )
        for spec in asked
    ]
    images = []
    for outcome in runner.generate_batch(items):
        if isinstance(outcome, Failure):
            raise outcome.exception()
        images.append(outcome.image)
    return images


def quality(
    runner: PipelineRunner, quick: bool, guidance: float, cache: bool = False
) -> dict[str, Any]:
    asked = prompts(quick)
    right = {score: 0 for score in SCORES}
    by_shape = {shape: 0 for shape in SHAPES}
    for seed in SEEDS:
        for (colour, shape, background), image in zip(
            asked, draw_all(runner, asked, guidance, seed, cache), strict=True
        ):
            reading = measure(image)
            right["background"] += reading.background == background
            right["colour"] += reading.colour == colour
            right["shape"] += reading.shape == shape
            by_shape[shape] += reading.shape == shape
    images = len(asked) * len(SEEDS)
    per_shape = images / len(SHAPES)
    return {
        "images": images,
        **{f"{score}_right": round(right[score] / images, 3) for score in SCORES},
        "shape_right_by_shape": {k: round(v / per_shape, 3) for k, v in by_shape.items()},
    }


def default_guidance(runner: PipelineRunner) -> float:
    return runner.model.info.default_guidance_scale


def seconds_per_image(runner: PipelineRunner, repeats: int) -> float:
    times = []
    for seed in range(repeats + 1):
        started = time.perf_counter()
        draw_all(runner, [("red", "circle", "blue")], default_guidance(runner), seed)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])  # the first call warms up


def grid(runner: PipelineRunner, path: Path) -> None:
    """Each shape in each colour, on a background three colours along, at the default
    guidance, two pixels per pixel, captioned."""
    colours = list(COLOURS)
    asked = [
        (colour, shape, colours[(k + 3) % len(colours)])
        for shape in SHAPES
        for k, colour in enumerate(colours)
    ]
    tile, label = 128, 16
    picture = Image.new("RGB", (tile * len(colours), (tile + label * 2) * len(SHAPES)), "white")
    pen = ImageDraw.Draw(picture)
    images = draw_all(runner, asked, default_guidance(runner), 1)
    for index, (spec, image) in enumerate(zip(asked, images, strict=True)):
        x, y = (index % len(colours)) * tile, (index // len(colours)) * (tile + label * 2)
        picture.paste(image.resize((tile, tile), Image.Resampling.NEAREST), (x, y))
        colour, shape, background = spec
        pen.text((x + 4, y + tile + 1), f"{colour} {shape}", fill="black")
        pen.text((x + 4, y + tile + label), f"on {background}", fill="dimgray")
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, optimize=True)


def measure_model(quick: bool, grid_path: Path | None) -> dict[str, Any]:
    stored = ensure_built(SD_SHAPES)
    runner = PipelineRunner(load_model(stored), max_batch_size=len(COLOURS) * len(SHAPES))
    result: dict[str, Any] = {"quick": quick, "machine": machine(), "model": str(stored.tag)}
    result["seconds_per_image_64x64_20_steps"] = round(
        seconds_per_image(runner, 2 if quick else 10), 3
    )
    guidances = sorted({*GUIDANCE, default_guidance(runner)})
    result["default_guidance_scale"] = default_guidance(runner)
    result["quality"] = {str(g): quality(runner, quick, g) for g in guidances}
    if grid_path:
        grid(runner, grid_path)
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"sd-shapes ({result['model']}) on {result['machine']}: "
        f"{result['seconds_per_image_64x64_20_steps']} s per 64x64 image, 20 steps",
        "| guidance | images | background right | shape colour right | shape right "
        "| circle / square / triangle |",
        "|---|---|---|---|---|---|",
    ]
    for guidance, row in result["quality"].items():
        by_shape = " / ".join(f"{v:.0%}" for v in row["shape_right_by_shape"].values())
        lines.append(
            f"| {guidance} | {row['images']} | {row['background_right']:.1%} "
            f"| {row['colour_right']:.1%} | {row['shape_right']:.1%} | {by_shape} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_model")
    parser.add_argument("--quick", action="store_true", help="a few prompts, to check it runs")
    parser.add_argument("--json", type=Path, default=Path("bench/results/demo_model.json"))
    parser.add_argument("--grid", type=Path, help="also draw docs/models.md's grid picture here")
    args = parser.parse_args(argv)
    return report(measure_model(args.quick, args.grid), args.json, table)


if __name__ == "__main__":
    main(sys.argv[1:])
