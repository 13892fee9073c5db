"""Train ``sd-shapes-control`` on CPU: ``python -m models train-control``.

A ControlNet copied from ``sd-shapes``' UNet learns, with the UNet and text encoder frozen,
to put the caption's shape where the control image says: the scene's silhouette (white on
black) or, a third of the time, its outline (what a Canny edge map of a drawn shape shows),
at a random place and size. Captions are left out in part as in sd-shapes' own training, so
the control works with any prompt the model knows. From fixed seeds and step counts, on one
thread; the weights go to one safetensors file in float16 with the hash of everything that
made them in its metadata (a test checks it against the recipe).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from PIL import Image, ImageFilter
from safetensors.torch import save_file

from .build import build_pipeline
from .controlnets import SD_SHAPES_CONTROL, ControlRecipe
from .recipes import RECIPES, digest
from .shapes import WORLD, Scene, random_scene, silhouette
from .training import (
    CAPTION_FORMS,
    caption_tokens,
    cosine,
    encode,
    noised,
    optimised,
    reproducible,
    weighted_loss,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlTraining:
    seed: int = 0
    threads: int = 1
    scenes: int = 4096
    steps: int = 1500
    batch: int = 32
    lr: float = 5e-4
    warmup_steps: int = 30
    min_snr_gamma: float = 5.0
    outline_share: float = 1 / 3


CONTROL_TRAINING = ControlTraining()


def control_hash(
    recipe: ControlRecipe = SD_SHAPES_CONTROL, training: ControlTraining = CONTROL_TRAINING
) -> str:
    """Everything that makes the weights: the base's weights, the ControlNet's shape, the
    training settings and the synthetic world."""
    base = RECIPES[recipe.base].version()
    shape = {"conditioning_channels": recipe.conditioning_channels}
    return digest({"base": base, "control": shape, "training": asdict(training), **WORLD})


def outline(image: np.ndarray) -> np.ndarray:
    """A silhouette's edge, one or two pixels wide, white on black."""
    edges = Image.fromarray(image).convert("L").filter(ImageFilter.FIND_EDGES)
    return np.asarray(edges.point(lambda value: 255 if value > 64 else 0).convert("RGB"))


def control_image(scene: Scene, outlined: bool) -> np.ndarray:
    shape = silhouette(scene)
    return outline(shape) if outlined else shape


def train_controlnet(
    pipeline: StableDiffusionPipeline,
    controlnet: torch.nn.Module,
    training: ControlTraining,
) -> None:
    rng = np.random.default_rng(training.seed)
    scenes = [random_scene(rng) for _ in range(training.scenes)]
    latents = encode(pipeline, scenes)
    outlined = rng.random(len(scenes)) < training.outline_share
    controls = torch.from_numpy(
        np.stack([control_image(s, o) for s, o in zip(scenes, outlined, strict=True)])
    )
    controls = controls.permute(0, 3, 1, 2).float() / 255  # as the pipelines give it: [0, 1]
    scale = pipeline.vae.config.scaling_factor
    unet, text_encoder, tokenizer = pipeline.unet, pipeline.text_encoder, pipeline.tokenizer
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    controlnet.train()
    noise_schedule = DDPMScheduler.from_config(pipeline.scheduler.config)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=training.lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine(step, training.steps, training.warmup_steps)
    )
    generator = torch.Generator().manual_seed(training.seed + 1)
    for step in range(training.steps):
        picked = rng.integers(0, len(scenes), size=training.batch)
        tokens = caption_tokens(tokenizer, [scenes[i] for i in picked], rng, CAPTION_FORMS)
        noisy, noise, timesteps = noised(latents[picked], scale, noise_schedule, generator)
        with torch.no_grad():
            context = text_encoder(tokens)[0]
        down, mid = controlnet(
            noisy, timesteps, context, controlnet_cond=controls[picked], return_dict=False
        )
        predicted = unet(
            noisy,
            timesteps,
            context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        loss = weighted_loss(predicted, noise, noise_schedule, timesteps, training.min_snr_gamma)
        optimised(loss, optimizer, schedule, controlnet.parameters())
        if step % 50 == 0 or step == training.steps - 1:
            logger.info("controlnet step %d/%d: loss %.4f", step + 1, training.steps, loss.item())
    controlnet.eval()


def train_control(
    out: Path,
    recipe: ControlRecipe = SD_SHAPES_CONTROL,
    training: ControlTraining = CONTROL_TRAINING,
) -> Path:
    """Train the recipe's ControlNet on its base and write ``out``."""
    started = time.perf_counter()
    with reproducible(training.seed, training.threads):
        pipeline = build_pipeline(RECIPES[recipe.base])
        controlnet = recipe.untrained(pipeline.unet)
        train_controlnet(pipeline, controlnet, training)
    weights = {k: v.detach().half().contiguous() for k, v in controlnet.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, out, metadata={"recipe": control_hash(recipe, training)})
    logger.info(
        "wrote %s (%.1f MB) in %.0f s", out, out.stat().st_size / 1e6, time.perf_counter() - started
    )
    return out
