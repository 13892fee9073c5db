"""Put pipelines into the BentoML model store.

    python -m models build sd-shapes          # store the demo model from its committed weights
    python -m models build sd-tiny            # build and store a recipe's model (no download)
    python -m models build sd15-random        # SD 1.5's architecture, random weights
    python -m models train-shapes             # retrain sd-shapes' committed weights (CPU, ~40 min)
    python -m models import SOURCE [--name NAME] [--steps N] [--guidance G] [--dtype D]

SOURCE is a Hugging Face hub id (stabilityai/sd-turbo) or a local diffusers directory.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import torch
from diffusers import AutoPipelineForText2Image

from .recipes import RECIPES, SD_SHAPES
from .store import ensure_built, save_pipeline


def default_name(source: str) -> str:
    """``stabilityai/sd-turbo`` -> ``sd-turbo``: the last path part, as a valid BentoML tag name."""
    last = Path(source.rstrip("/")).name.lower()
    return re.sub(r"[^a-z0-9_.-]+", "-", last).strip("-._") or "model"


def import_pipeline(args: argparse.Namespace) -> str:
    # from_pretrained shows download and loading progress bars on stderr.
    pipeline = AutoPipelineForText2Image.from_pretrained(
        args.source, dtype=getattr(torch, args.dtype), variant=args.variant
    )
    model = save_pipeline(
        pipeline,
        args.name or default_name(args.source),
        source=args.source,
        steps=args.steps,
        guidance_scale=args.guidance,
    )
    return str(model.tag)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    builds = commands.add_parser("build", help="build and store a model from its recipe")
    builds.add_argument(
        "recipe", choices=RECIPES, help=f"one of {', '.join(RECIPES)}; sd-shapes is the default"
    )
    imports = commands.add_parser("import", help="import a diffusers pipeline into the store")
    imports.add_argument("source", help="hub id or local directory of a diffusers pipeline")
    imports.add_argument("--name", help="model name in the store (default: from SOURCE)")
    imports.add_argument("--steps", type=int, help="default steps (default: the pipeline's)")
    imports.add_argument("--guidance", type=float, help="default guidance scale")
    imports.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default="float16",
        help="dtype of the stored weights; the service casts at load (default: %(default)s)",
    )
    imports.add_argument("--variant", help="weights variant to fetch, such as fp16")
    trains = commands.add_parser("train-shapes", help="train sd-shapes from its recipe on CPU")
    trains.add_argument(
        "--out", type=Path, default=SD_SHAPES.weights, help="weights file (default: %(default)s)"
    )
    trains.add_argument(
        "--work",
        type=Path,
        default=Path.home() / ".cache" / "imagegen" / "sd-shapes",
        help="where finished stages are kept, to resume (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.command == "build":
        written = str(ensure_built(RECIPES[args.recipe]).tag)
    elif args.command == "train-shapes":
        from .training import train_shapes  # torch training code only for this command

        written = str(train_shapes(args.out, args.work))
    else:
        written = import_pipeline(args)
    sys.stdout.write(f"{written}\n")


if __name__ == "__main__":
    main()
