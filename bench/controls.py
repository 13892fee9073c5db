"""Whether ``sd-shapes-control`` puts ``sd-shapes``' shape where its control image says, and
what it costs the prompt.

Held-out scenes (drawn from a seed training never used: other places and sizes), each
captioned in full ("a red circle on a blue background"), drawn at the model's defaults with
the scene's silhouette as the control image, with its outline, and with no control. Each
image is read back by ``models.shapes``: the **IoU** of its shape's pixels with the
silhouette's, and whether its background, shape colour and shape kind are the prompt's.
Through the service's own generation path (``PipelineRunner``, diffusers'
``StableDiffusionControlNetPipeline``).

    python -m bench.controls [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.reporting import machine, report
from imagegen.engine.controlling import ControlNets
from imagegen.engine.generation import PipelineRunner
from imagegen.engine.loading import load_model
from imagegen.hop import Failure
from imagegen.inputs import pack
from imagegen.parameters import resolve
from imagegen.schemas import ImageRequest, WorkItem
from models.control_training import outline
from models.controlnets import SD_SHAPES_CONTROL, ensure_controlnet
from models.recipes import SD_SHAPES
from models.shapes import Scene, measure, random_scene, shape_mask, silhouette
from models.store import ensure_built

HELD_OUT_SEED = 1000  # training drew its scenes from seed 0
SCENES = 48
CONTROLS = ("silhouette", "outline", "none")


def iou(image: Image.Image, scene: Scene) -> float:
    """Overlap of the drawn shape's pixels with the scene's silhouette."""
    _, drawn = shape_mask(np.asarray(image.convert("RGB")))
    wanted = silhouette(scene)[:, :, 0] > 127
    union = (drawn | wanted).sum()
    return float((drawn & wanted).sum() / union) if union else 0.0


def control_map(scene: Scene, kind: str) -> Image.Image:
    shape = silhouette(scene)
    return Image.fromarray(outline(shape) if kind == "outline" else shape)


def draw(runner: PipelineRunner, scenes: list[Scene], kind: str, seed: int) -> list[Image.Image]:
    """Each scene drawn from its caption, guided by its ``kind`` of control (or none)."""
    name = runner.model.info.controlnets[0].name
    items = []
    for scene in scenes:
        guided = kind != "none"
        controls = [{"name": name, "image": "-"}] if guided else []
        request = ImageRequest(prompt=scene.caption, seed=seed, controlnets=controls)
        maps = [pack(control_map(scene, kind))] if guided else []
        digests = [f"{kind}-{scene}"] if guided else []
        parameters = resolve(request, runner.model.info, control_digests=digests)
        items.append(WorkItem(id=uuid.uuid4().hex, parameters=parameters, controls=maps))
    images = []
    for outcome in runner.generate_batch(items):
        if isinstance(outcome, Failure):
            raise outcome.exception()
        images.append(outcome.image)
    return images


def scores(images: list[Image.Image], scenes: list[Scene]) -> dict[str, float]:
    readings = [measure(image) for image in images]
    count = len(scenes)
    return {
        "iou": round(sum(iou(i, s) for i, s in zip(images, scenes, strict=True)) / count, 3),
        "background_right": round(
            sum(r.background == s.background for r, s in zip(readings, scenes, strict=True))
            / count,
            3,
        ),
        "colour_right": round(
            sum(r.colour == s.colour for r, s in zip(readings, scenes, strict=True)) / count, 3
        ),
        "shape_right": round(
            sum(r.shape == s.shape for r, s in zip(readings, scenes, strict=True)) / count, 3
        ),
    }


def weights_mb(pipelines: list[Any]) -> float:
    """Memory of the distinct tensors the pipelines' modules hold (a weight two pipelines
    share counts once)."""
    storages = {
        tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes()
        for pipeline in pipelines
        for module in pipeline.components.values()
        if isinstance(module, torch.nn.Module)
        for tensor in [*module.parameters(), *module.buffers()]
    }
    return round(sum(storages.values()) / 1e6, 2)


def memory(runner: PipelineRunner) -> dict[str, float]:
    """The model's weights, its ControlNet's, and everything its six pipelines hold."""
    model = list(runner.model.pipelines.values())
    controlled = list(runner.controls.pipelines.values())
    network = next(iter(runner.controls.networks.values()))
    return {
        "model_mb": weights_mb(model),
        "controlnet_mb": round(
            sum(p.numel() * p.element_size() for p in network.parameters()) / 1e6, 2
        ),
        "all_pipelines_mb": weights_mb(model + controlled),
    }


def measure_controls(quick: bool) -> dict[str, Any]:
    stored = ensure_controlnet(SD_SHAPES_CONTROL)
    model = load_model(ensure_built(SD_SHAPES))
    runner = PipelineRunner(model, 16, controlnets=ControlNets([stored], "cpu", "float32"))
    rng = np.random.default_rng(HELD_OUT_SEED)
    scenes = [random_scene(rng) for _ in range(6 if quick else SCENES)]
    result: dict[str, Any] = {
        "quick": quick,
        "machine": machine(),
        "model": runner.model.tag,
        "controlnet": str(stored.tag),
        "scenes": len(scenes),
    }
    result["controls"] = {kind: scores(draw(runner, scenes, kind, 1), scenes) for kind in CONTROLS}
    result["memory"] = memory(runner)
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['controlnet']} on {result['model']}, {result['scenes']} held-out scenes, "
        f"{result['machine']}",
        "| control image | IoU with the silhouette | background right | shape colour right "
        "| shape right |",
        "|---|---|---|---|---|",
    ]
    for kind, row in result["controls"].items():
        lines.append(
            f"| {kind} | {row['iou']:.2f} | {row['background_right']:.0%} "
            f"| {row['colour_right']:.0%} | {row['shape_right']:.0%} |"
        )
    held = result["memory"]
    lines.append(
        f"\nweights in memory: the model {held['model_mb']} MB, its ControlNet "
        f"{held['controlnet_mb']} MB; its three pipelines and three ControlNet pipelines "
        f"together {held['all_pipelines_mb']} MB"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.controls")
    parser.add_argument("--quick", action="store_true", help="a few scenes, to check it runs")
    parser.add_argument("--json", type=Path, default=Path("bench/results/controls.json"))
    args = parser.parse_args(argv)
    return report(measure_controls(args.quick), args.json, table)


if __name__ == "__main__":
    main(sys.argv[1:])
