"""What a PNG answer costs to encode: the service's deflate strategy (zlib's run-length one,
``imagegen.serving.encoding.PNG_STRATEGY``) against Pillow's defaults (level 6, the default
strategy) and its fastest level (1), on images the repo's models generate: sd-tiny (random
weights: a noisy texture, the hardest case for deflate) at the serving benchmark's 64x64 and at
512x512, and sd-shapes (trained: flat shapes on a plain ground, the easiest).

Each encode is timed alone, in this process, as the public process runs it (on its event loop
or in a worker thread), the median of ``--repeats``; bytes and time are relative to Pillow's
default.

    python -m bench.encoding [--repeats N] [--json PATH]
    python -m bench.encoding --quick          # 64x64 only, a few repeats: that it runs
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path
from typing import Any

from PIL.Image import Image

from bench.reporting import machine, report
from imagegen.engine.generation import PipelineRunner
from imagegen.engine.loading import load_model
from imagegen.parameters import resolve
from imagegen.schemas import ImageRequest
from imagegen.serving.encoding import PNG_STRATEGY
from models.recipes import SD_SHAPES, SD_TINY, Recipe
from models.store import ensure_built

# (recipe, side): what each row encodes.
IMAGES: list[tuple[Recipe, int]] = [
    (SD_TINY, 64),
    (SD_SHAPES, 64),
    (SD_TINY, 512),
    (SD_SHAPES, 512),
]
ENCODERS: dict[str, dict[str, Any]] = {
    "Pillow's default (level 6)": {},
    "level 1": {"compress_level": 1},
    "the service's (level 6, run-length)": {"compress_type": PNG_STRATEGY},
}


def generated(recipe: Recipe, side: int) -> Image:
    runner = PipelineRunner(load_model(ensure_built(recipe)))
    body = {"prompt": "a red circle on a blue background", "seed": 1, "num_inference_steps": 4}
    request = ImageRequest.model_validate({**body, "width": side, "height": side})
    return runner.generate(resolve(request, runner.model.info)).image


def timed(image: Image, options: dict[str, Any], repeats: int) -> tuple[float, int]:
    """The median seconds of ``repeats`` encodes with ``options``, and the bytes of one."""
    seconds = []
    for _ in range(repeats + 1):  # the first warms Pillow's plugin and zlib up
        buffer = io.BytesIO()
        started = time.perf_counter()
        image.save(buffer, format="PNG", **options)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[1:]), buffer.tell()


def measure(quick: bool, repeats: int) -> dict[str, Any]:
    rows = []
    for recipe, side in IMAGES[:2] if quick else IMAGES:
        image = generated(recipe, side)
        # Fewer repeats for the large images: a default-level encode is tens of ms there.
        times = repeats if side <= 128 else max(repeats // 10, 3)
        encoded = {name: timed(image, options, times) for name, options in ENCODERS.items()}
        default_s, default_bytes = encoded["Pillow's default (level 6)"]
        rows.append(
            {
                "image": f"{recipe.name} {side}x{side}",
                "encoders": {
                    name: {
                        "ms": round(s * 1000, 3),
                        "bytes": size,
                        "time_vs_default": round(s / default_s, 2),
                        "bytes_vs_default": round(size / default_bytes, 3),
                    }
                    for name, (s, size) in encoded.items()
                },
            }
        )
    return {"quick": quick, "repeats": repeats, "rows": rows, "machine": machine()}


def table(result: dict[str, Any]) -> str:
    names = list(ENCODERS)
    lines = [
        "| image | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for row in result["rows"]:
        cells = [
            f"{e['ms']} ms, {e['bytes']} B ({e['time_vs_default']}x time, "
            f"{e['bytes_vs_default']}x bytes)"
            for e in (row["encoders"][name] for name in names)
        ]
        lines.append(f"| {row['image']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", type=Path, default=Path("bench/results/encoding.json"))
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else args.repeats
    return report(measure(args.quick, repeats), args.json, table)


if __name__ == "__main__":
    main()
