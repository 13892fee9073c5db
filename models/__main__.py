"""Put pipelines into the BentoML model store.

    python -m models build sd-shapes          # store the demo model from its committed weights
    python -m models build sd-tiny            # build and store a recipe's model (no download)
    python -m models build sd15-random        # SD 1.5's architecture, random weights
    python -m models train-shapes             # retrain sd-shapes' committed weights (CPU, ~40 min)
    python -m models build sdxl-tiny          # also sd3-tiny, flux-tiny: each family, tiny
    python -m models build sd-tiny-style      # a LoRA adapter of sd-tiny, built from code
    python -m models import SOURCE [--name NAME] [--steps N] [--guidance G] [--size S]
                                   [--dtype D] [--variant V]
    python -m models import-lora FILE --name NAME --base MODEL
    python -m models import-upscaler FILE --name NAME
    python -m models build esrgan-tiny-x4     # a random ESRGAN upscaler, for the tests
    python -m models import-controlnet SOURCE --name NAME --base FAMILY [--dtype D]
    python -m models build sd-shapes-control  # its trained ControlNet (also sd-tiny-control, ...)
    python -m models train-control            # retrain sd-shapes-control's weights (CPU, ~12 min)

SOURCE is a Hugging Face hub id (stabilityai/sd-turbo) or a local diffusers directory, of any
family the service runs (SD 1.x/2.x, SDXL, SD3, FLUX.1). FILE is a LoRA's .safetensors
(diffusers' or kohya's layout) or a directory holding one; MODEL is a stored model's name.
An upscaler's FILE is a super-resolution network's .pth or .safetensors (ESRGAN, Real-ESRGAN,
SwinIR, HAT, DAT, SPAN, ...: spandrel detects which); NAME is what requests call it.
A ControlNet's SOURCE is a hub id or a local diffusers directory of a ControlNetModel (SD
1.x/2.x, SDXL), SD3ControlNetModel or FluxControlNetModel; FAMILY is sd, sdxl, sd3 or flux.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import torch
from diffusers import AutoPipelineForText2Image

from .adapters import BadAdapter, ensure_adapter, import_lora
from .controlnets import (
    CONTROL_RECIPES,
    SD_SHAPES_CONTROL,
    BadControlNet,
    ensure_controlnet,
    import_controlnet,
)
from .recipes import ADAPTER_RECIPES, RECIPES, SD_SHAPES
from .store import UnknownModel, ensure_built, save_pipeline
from .upscalers import UPSCALER_RECIPES, BadUpscaler, ensure_upscaler, import_upscaler


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
        size=args.size,
    )
    return str(model.tag)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    builds = commands.add_parser("build", help="build and store a model from its recipe")
    recipes = [*RECIPES, *ADAPTER_RECIPES, *UPSCALER_RECIPES, *CONTROL_RECIPES]
    builds.add_argument(
        "recipe", choices=recipes, help=f"one of {', '.join(recipes)}; sd-shapes is the default"
    )
    imports = commands.add_parser("import", help="import a diffusers pipeline into the store")
    imports.add_argument("source", help="hub id or local directory of a diffusers pipeline")
    imports.add_argument("--name", help="model name in the store (default: from SOURCE)")
    imports.add_argument("--steps", type=int, help="default steps (default: the pipeline's)")
    imports.add_argument("--guidance", type=float, help="default guidance scale")
    imports.add_argument(
        "--size",
        type=int,
        help="native image side, where the model was distilled at another "
        "size than its denoiser's config says (SDXL-Turbo: 512)",
    )
    imports.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default="float16",
        help="dtype of the stored weights; the service casts at load (default: %(default)s)",
    )
    imports.add_argument("--variant", help="weights variant to fetch, such as fp16")
    loras = commands.add_parser("import-lora", help="import a LoRA adapter into the store")
    loras.add_argument("source", type=Path, help="a .safetensors file, or a directory of one")
    loras.add_argument("--name", required=True, help="adapter name, as requests give it")
    loras.add_argument("--base", required=True, help="the stored model it adapts")
    upscalers = commands.add_parser(
        "import-upscaler", help="import a super-resolution network into the store"
    )
    upscalers.add_argument("source", type=Path, help="its weights: .pth or .safetensors")
    upscalers.add_argument("--name", required=True, help="upscaler name, as requests give it")
    controls = commands.add_parser("import-controlnet", help="import a ControlNet into the store")
    controls.add_argument("source", help="hub id or local directory of a diffusers ControlNet")
    controls.add_argument("--name", required=True, help="ControlNet name, as requests give it")
    controls.add_argument(
        "--base", required=True, help="the family of the pipelines it guides: sd, sdxl, sd3, flux"
    )
    controls.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default="float16",
        help="dtype of the stored weights; the service casts at load (default: %(default)s)",
    )
    train_control = commands.add_parser(
        "train-control", help="train sd-shapes-control from its recipe on CPU"
    )
    train_control.add_argument(
        "--out",
        type=Path,
        default=SD_SHAPES_CONTROL.weights,
        help="weights file (default: %(default)s)",
    )
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
    args = parse_args(argv)
    try:
        written = run(args)
    except (BadAdapter, BadControlNet, BadUpscaler, UnknownModel) as error:
        sys.exit(f"error: {error}")
    sys.stdout.write(f"{written}\n")


def run(args: argparse.Namespace) -> str:
    """The command's result: the tag (or file) it wrote."""
    if args.command == "build" and args.recipe in ADAPTER_RECIPES:
        return str(ensure_adapter(ADAPTER_RECIPES[args.recipe]).tag)
    if args.command == "build" and args.recipe in UPSCALER_RECIPES:
        return str(ensure_upscaler(UPSCALER_RECIPES[args.recipe]).tag)
    if args.command == "build" and args.recipe in CONTROL_RECIPES:
        return str(ensure_controlnet(CONTROL_RECIPES[args.recipe]).tag)
    if args.command == "build":
        return str(ensure_built(RECIPES[args.recipe]).tag)
    if args.command == "import-upscaler":
        return str(import_upscaler(args.source, args.name).tag)
    if args.command == "import-lora":
        return str(import_lora(args.source, args.name, args.base).tag)
    if args.command == "import-controlnet":
        return str(import_controlnet(args.source, args.name, args.base, dtype=args.dtype).tag)
    if args.command == "train-control":
        from .control_training import train_control  # torch training code only for this command

        return str(train_control(args.out))
    if args.command == "train-shapes":
        from .training import train_shapes  # torch training code only for this command

        return str(train_shapes(args.out, args.work))
    return import_pipeline(args)


if __name__ == "__main__":
    # Here, not in main(): the tests call main(), and a handler it left on their captured
    # stderr would fail every later log line once pytest closes that stream.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
