"""Does the work unit track time? Seconds per image against the charge (``imagegen.work``) for
requests that differ in what they cost: the scheduler's denoiser evaluations per step (Euler:
one, Heun: two), guidance, one step (where decode and encode dominate), image-to-image,
inpainting and a ControlNet (the model's random one, ``models.controlnets``); and the parts
the fixed charge stands for, timed alone: one denoiser evaluation, the VAE's decode and
encode, and the PNG encode, in evaluations.

If the charge is right, seconds per unit of work is the same in every row (the spread row
says how far it is). Through the service's own ``PipelineRunner``, one image per call, the
median of ``--repeats`` after a warm-up call.

    python -m bench.work [--model sd15-random] [--size 256] [--steps 8] [--repeats 3]
    python -m bench.work --quick          # sd-tiny, 64x64: that it runs
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.edits import inputs
from bench.reporting import generation_options, machine, report
from imagegen.engine.controlling import ControlNets
from imagegen.engine.generation import PipelineRunner
from imagegen.engine.loading import load_model
from imagegen.hop import Failure
from imagegen.inputs import InputLimits
from imagegen.parameters import resolve
from imagegen.schemas import ImageRequest, WorkItem
from imagegen.serving.encoding import encode_image
from imagegen.serving.gateway import read_inputs
from imagegen.work import image_work
from models.controlnets import CONTROL_RECIPES, ensure_controlnet
from models.recipes import SD_TINY
from models.store import ensure_built, find_model

PROMPT = "a red square on a blue background"


def rows(steps: int) -> dict[str, dict[str, Any]]:
    """Requests that cost differently, by name."""
    return {
        "euler, guided": {"scheduler": "euler", "num_inference_steps": steps},
        "heun, guided": {"scheduler": "heun", "num_inference_steps": steps},
        "euler, unguided": {
            "scheduler": "euler",
            "num_inference_steps": steps,
            "guidance_scale": 1.0,
        },
        "euler, guided, 1 step": {"scheduler": "euler", "num_inference_steps": 1},
        "image-to-image, strength 0.5": {
            "scheduler": "euler",
            "num_inference_steps": steps,
            "strength": 0.5,
            "edit": "image",
        },
        "inpainting, strength 0.75": {
            "scheduler": "euler",
            "num_inference_steps": steps,
            "edit": "mask",
        },
        "euler, guided, 1 ControlNet": {
            "scheduler": "euler",
            "num_inference_steps": steps,
            "edit": "control",
        },
    }


def seconds(call: Any, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def row(runner: PipelineRunner, fields: dict[str, Any], size: int, repeats: int) -> dict[str, Any]:
    fields = dict(fields)
    edit_kind = fields.pop("edit", None)
    given = inputs(size)
    body = {"prompt": PROMPT, "width": size, "height": size, "seed": 1, **fields}
    if edit_kind == "control":
        body["controlnets"] = [
            {"name": runner.model.info.controlnets[0].name, "image": given["image"]}
        ]
    elif edit_kind is not None:
        body["image"] = given["image"]
        if edit_kind == "mask":
            body["mask"] = given["mask"]
    request = ImageRequest.model_validate(body)
    limits = InputLimits(size * size, 10 * 2**20)
    edit, controls = read_inputs(request, (size, size), limits)
    parameters = resolve(request, runner.model.info, 1, edit, controls.digests)
    work_item = WorkItem(
        id=uuid.uuid4().hex,
        parameters=parameters,
        image=edit.image if edit else None,
        mask=edit.mask if edit else None,
        controls=controls.maps,
    )

    def call() -> None:
        (outcome,) = runner.generate_batch([work_item])
        if isinstance(outcome, Failure):
            raise RuntimeError(outcome.message)

    spent = seconds(call, repeats)
    charged = image_work(parameters)
    return {"seconds": round(spent, 3), "work": round(charged, 4), "s_per_work": spent / charged}


@torch.no_grad()
def parts(runner: PipelineRunner, size: int, repeats: int) -> dict[str, float]:
    """Seconds of one denoiser evaluation (one image, no guidance), the VAE's decode and
    encode, and the PNG encode, at ``size``."""
    pipeline = runner.model.pipeline
    unet, vae = pipeline.unet, pipeline.vae
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    device, dtype = unet.device, unet.dtype
    latents = torch.randn(1, unet.config.in_channels, size // factor, size // factor)
    latents = latents.to(device, dtype)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    pixels = torch.rand(1, 3, size, size, device=device, dtype=vae.dtype) * 2 - 1
    image = runner.model.pipeline.image_processor.postprocess(
        vae.decode(latents.to(vae.dtype)).sample, output_type="pil"
    )[0]
    parameters = resolve(ImageRequest(prompt=PROMPT, width=size, height=size), runner.model.info)
    timed = {
        "evaluation": seconds(lambda: unet(latents, 500, encoder_hidden_states=text), repeats),
        "vae_decode": seconds(lambda: vae.decode(latents.to(vae.dtype)), repeats),
        "vae_encode": seconds(lambda: vae.encode(pixels), repeats),
        "png_encode": seconds(lambda: encode_image(image, parameters, "png", 90), repeats),
    }
    networks = list(runner.controls.networks.values())
    if networks:  # what CONTROL_WORK stands for; the control image in [0, 1], as given
        control = (pixels + 1) / 2
        timed["controlnet_evaluation"] = seconds(
            lambda: networks[0](latents, 500, text, controlnet_cond=control), repeats
        )
    return timed


def measure(model: str, size: int, steps: int, repeats: int) -> dict[str, Any]:
    stored = ensure_built(SD_TINY) if model == SD_TINY.name else find_model(model)
    # The model's random ControlNet, where it has a recipe (the ControlNet row needs one).
    nets = [ensure_controlnet(r) for r in CONTROL_RECIPES.values() if r.base == stored.tag.name]
    runner = PipelineRunner(load_model(stored), controlnets=ControlNets(nets, "cpu", "float32"))
    asked = {
        name: fields for name, fields in rows(steps).items() if nets or "ControlNet" not in name
    }
    measured = {name: row(runner, fields, size, repeats) for name, fields in asked.items()}
    rates = [entry["s_per_work"] for entry in measured.values()]
    # In the runner's own lane: torch on a second thread would start a second OpenMP team,
    # and on two cores both would crawl (imagegen.engine.compute).
    timed = runner.lane.submit(partial(parts, runner, size, repeats)).result()
    evaluation = timed["evaluation"]
    return {
        "machine": machine(),
        "model": str(stored.tag),
        "size": size,
        "steps": steps,
        "repeats": repeats,
        "rows": measured,
        "spread": round(max(rates) / min(rates), 2),
        "parts_s": {name: round(value, 4) for name, value in timed.items()},
        "parts_in_evaluations": {
            name: round(value / evaluation, 2) for name, value in timed.items()
        },
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']}, {result['size']}x{result['size']}, {result['steps']} steps, "
        f"median of {result['repeats']} ({result['machine']})\n",
        "| request | s/image | work charged | s per unit |",
        "|---|---|---|---|",
    ]
    for name, entry in result["rows"].items():
        lines.append(
            f"| {name} | {entry['seconds']} | {entry['work']} | {entry['s_per_work']:.3f} |"
        )
    lines.append(f"\nspread of s per unit (largest / smallest): {result['spread']}x\n")
    lines.append("| part | s | in denoiser evaluations |\n|---|---|---|")
    for name, value in result["parts_s"].items():
        lines.append(f"| {name} | {value} | {result['parts_in_evaluations'][name]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    generation_options(parser, "sd15-random", 256, 8, 3)
    parser.add_argument("--json", type=Path, default=Path("bench/results/work.json"))
    parser.add_argument("--quick", action="store_true", help="sd-tiny, 64x64, 2 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.size, args.steps, args.repeats = SD_TINY.name, 64, 2, 1
    return report(measure(args.model, args.size, args.steps, args.repeats), args.json, table)


if __name__ == "__main__":
    main()
