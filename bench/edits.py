"""What image-to-image and inpainting cost next to text-to-image: seconds per image and
resident memory, through the service's own generation path (``PipelineRunner``).

At one size and step count, each mode in turn, text-to-image first: `--repeats` single-image
calls (after one to warm up), the median kept; image-to-image at strength 0.5 (it runs half
the steps), inpainting at strength 1 (all of them) with a centred square mask. The input is
a drawn shape (``models.shapes``) resized to the size. Resident memory (RSS, and the peak) is
read after each mode's calls: what edits add to a process that has served text-to-image.

    python -m bench.edits [--model sd-shapes] [--size 64] [--steps 20] [--repeats 5]
                          [--json PATH] [--quick]
    python -m bench.edits --model sd15-random --size 512 --steps 10 --repeats 2   # SD 1.5 scale

``--model`` names a recipe (built on first use) or a stored model.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from PIL import Image

from bench.reporting import generation_options, machine, report
from imagegen.engine.generation import PipelineRunner
from imagegen.engine.loading import load_model
from imagegen.hop import Failure
from imagegen.inputs import InputLimits, pack, read_edit
from imagegen.parameters import resolve
from imagegen.schemas import ImageRequest, Mode, WorkItem
from models.recipes import SD_SHAPES
from models.shapes import Scene, draw
from models.store import find_model

MODES: dict[Mode, dict[str, Any]] = {
    "text-to-image": {},
    "image-to-image": {"strength": 0.5},
    "inpainting": {"strength": 1.0},
}
PROMPT = "a red square on a blue background"


def inputs(size: int) -> dict[str, str]:
    picture = Image.fromarray(draw(Scene("green", "circle", "white", 34, (32, 32))))
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, size * 3 // 4, size * 3 // 4))
    return {"image": pack(picture.resize((size, size))), "mask": pack(mask)}


def item(runner: PipelineRunner, mode: Mode, size: int, steps: int, seed: int) -> WorkItem:
    """One image of ``mode``, made as the gateway makes it from a request body."""
    given = inputs(size)
    fields: dict[str, Any] = {**MODES[mode]}
    if mode != "text-to-image":
        fields["image"] = given["image"]
    if mode == "inpainting":
        fields["mask"] = given["mask"]
    request = ImageRequest(
        prompt=PROMPT, width=size, height=size, num_inference_steps=steps, seed=seed, **fields
    )
    edit = None
    if request.image is not None:
        limits = InputLimits(max_pixels=size * size, max_bytes=2**30)
        edit = read_edit(request.image, request.mask, size, size, limits)
    return WorkItem(
        id=uuid.uuid4().hex,
        parameters=resolve(request, runner.model.info, edit=edit),
        image=edit.image if edit else None,
        mask=edit.mask if edit else None,
    )


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def measure_mode(
    runner: PipelineRunner, mode: Mode, size: int, steps: int, repeats: int
) -> dict[str, Any]:
    times = []
    for seed in range(repeats + 1):
        work = item(runner, mode, size, steps, seed)
        started = time.perf_counter()
        generate_once(runner, work)
        times.append(time.perf_counter() - started)
    return {
        "steps_run": work.parameters.denoising_steps,
        "s_per_image": round(statistics.median(times[1:]), 3),  # the first call warms up
        "rss_mib": round(rss_mib(), 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def generate_once(runner: PipelineRunner, work: WorkItem) -> None:
    (outcome,) = runner.generate_batch([work])
    if isinstance(outcome, Failure):
        raise outcome.exception()


def run(model: str, size: int, steps: int, repeats: int) -> dict[str, Any]:
    loaded_at = rss_mib()
    runner = PipelineRunner(load_model(find_model(model)))
    result: dict[str, Any] = {
        "machine": machine(),
        "model": runner.model.tag,
        "size": size,
        "steps": steps,
        "repeats": repeats,
        "rss_before_load_mib": round(loaded_at, 1),
        "rss_after_load_mib": round(rss_mib(), 1),
        "modes": {},
    }
    for mode in MODES:
        result["modes"][mode] = measure_mode(runner, mode, size, steps, repeats)
    text, last = result["modes"]["text-to-image"], result["modes"]["inpainting"]
    result["rss_growth_after_edits"] = round(last["rss_mib"] / text["rss_mib"] - 1, 4)
    result["peak_growth_after_edits"] = round(last["peak_rss_mib"] / text["peak_rss_mib"] - 1, 4)
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']}, {result['size']}x{result['size']}, {result['steps']} steps, "
        f"median of {result['repeats']} ({result['machine']})",
        "",
        "| mode | steps run | s/image | RSS after (MiB) | peak RSS (MiB) |",
        "|---|---|---|---|---|",
    ]
    for mode, row in result["modes"].items():
        lines.append(
            f"| {mode} | {row['steps_run']} | {row['s_per_image']} | {row['rss_mib']} | "
            f"{row['peak_rss_mib']} |"
        )
    lines.append(
        f"\nAfter both edit modes, against text-to-image alone: RSS "
        f"{result['rss_growth_after_edits']:+.1%}, peak {result['peak_growth_after_edits']:+.1%}."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.edits", description=__doc__)
    generation_options(parser, SD_SHAPES.name, 64, 20, 5)
    parser.add_argument("--json", type=Path, default=Path("bench/results/edits.json"))
    parser.add_argument("--quick", action="store_true", help="2 repeats of 4 steps")
    args = parser.parse_args(argv)
    steps, repeats = (4, 2) if args.quick else (args.steps, args.repeats)
    return report(run(args.model, args.size, steps, repeats), args.json, table)


if __name__ == "__main__":
    main()
