"""Train ``sd-shapes`` from scratch on CPU: ``python -m models train-shapes``.

Two stages, each from fixed seeds and step counts (a loop bounded by wall-clock time would not
be reproducible), on one thread (two threads beside another busy process stall, and the thread
count changes the float sums):

1. the VAE learns to compress 64x64 scenes (``models.shapes``) into 16x16x4 latents; their
   scale (1/std, Stable Diffusion's ``scaling_factor``) is then measured;
2. the UNet and the CLIP text encoder learn together to denoise those latents given the
   caption (epsilon prediction, min-SNR weighting), with parts of the caption left out and 10%
   empty captions, so guidance and negative prompts have an unconditional side to push from.

The weights go to one safetensors file in float16 with the hash of everything that made them
(architecture, training settings, the synthetic world) in its metadata; a test checks that the
committed file carries the current hash. A stage's result is cached under ``--work`` by its own
hash, so a second run after a UNet-only change skips the VAE.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from .build import TRAINED_PARTS, build_untrained, load_parts
from .recipes import SD_SHAPES, Recipe, digest
from .shapes import WORLD, Scene, caption, draw, random_scene

logger = logging.getLogger(__name__)

# How often each part of a caption is left out in the second stage.
CAPTION_FORMS = {
    "full": 0.65,  # a red circle on a blue background
    "no background": 0.1,  # a red circle
    "no colour": 0.1,  # a circle on a blue background
    "shape only": 0.05,  # a circle
    "empty": 0.1,  # the unconditional side of classifier-free guidance
}


@dataclass(frozen=True)
class Training:
    seed: int = 0
    threads: int = 1
    vae_steps: int = 900
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    scale_samples: int = 1024  # scenes the latents' scale is measured on
    scenes: int = 8192  # pre-rendered and encoded once for the second stage
    unet_steps: int = 2500
    unet_batch: int = 48
    unet_lr: float = 1e-3
    warmup_steps: int = 50
    min_snr_gamma: float = 5.0
    # Noise with a random mean per channel, so that the model learns to move an image's mean
    # colour, which plain noise barely teaches (offset noise, Guttenberg 2023): the pictures
    # here are mostly flat colour.
    noise_offset: float = 0.1
    caption_forms: dict[str, float] = field(default_factory=lambda: dict(CAPTION_FORMS))


SHAPES_TRAINING = Training()


def stage_hash(recipe: Recipe, training: Training, stage: str) -> str:
    """Everything that makes a stage's weights; the VAE's hash ignores the UNet's settings."""
    settings = asdict(training)
    if stage == "vae":
        shared = ("seed", "threads", "warmup_steps")
        settings = {k: v for k, v in settings.items() if k in shared or k.startswith("vae_")}
        architecture: dict[str, Any] = {"vae": recipe.vae}
    else:
        architecture = recipe.architecture()
    return digest({"stage": stage, "architecture": architecture, "training": settings, **WORLD})


def recipe_hash(recipe: Recipe = SD_SHAPES, training: Training = SHAPES_TRAINING) -> str:
    return stage_hash(recipe, training, "all")


def cosine(step: int, steps: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then a cosine decay to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images as a float batch in [-1, 1], as the VAE reads them."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1


def train_vae(pipeline: StableDiffusionPipeline, training: Training) -> None:
    vae = pipeline.vae.train()
    rng = np.random.default_rng(training.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=training.vae_lr, weight_decay=0.0)
    steps = training.vae_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine(step, steps, training.warmup_steps)
    )
    for step in range(steps):
        images = to_tensor([draw(random_scene(rng)) for _ in range(training.vae_batch)])
        posterior = vae.encode(images).latent_dist
        decoded = vae.decode(posterior.sample()).sample
        # L1 keeps edges sharp where MSE alone would blur them.
        reconstruction = (decoded - images).abs().mean() + (decoded - images).pow(2).mean()
        loss = reconstruction + training.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            logger.info(
                "vae step %d/%d: reconstruction %.4f", step + 1, steps, reconstruction.item()
            )
    vae.eval()


@torch.no_grad()
def encode(pipeline: StableDiffusionPipeline, scenes: list[Scene]) -> torch.Tensor:
    """Each scene's latent distribution: (n, 2, 4, 16, 16), mean and standard deviation."""
    parts = []
    for start in range(0, len(scenes), 256):
        images = to_tensor([draw(scene) for scene in scenes[start : start + 256]])
        latents = pipeline.vae.encode(images).latent_dist
        parts.append(torch.stack([latents.mean, latents.std], dim=1))
    return torch.cat(parts)


def measure_scale(pipeline: StableDiffusionPipeline, training: Training) -> float:
    rng = np.random.default_rng(training.seed + 1)
    latents = encode(pipeline, [random_scene(rng) for _ in range(training.scale_samples)])
    return float(1 / latents[:, 0].std())


def training_caption(scene: Scene, rng: np.random.Generator, forms: dict[str, float]) -> str:
    form = rng.choice(list(forms), p=list(forms.values()))
    colour = None if form in ("no colour", "shape only", "empty") else scene.colour
    shape = None if form == "empty" else scene.shape
    background = scene.background if form in ("full", "no colour") else None
    return caption(colour, shape, background)


def min_snr_weights(
    scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al., 2023): the easy, nearly
    clean timesteps stop dominating the loss."""
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def caption_tokens(
    tokenizer: Any, scenes: list[Scene], rng: np.random.Generator, forms: dict[str, float]
) -> torch.Tensor:
    """Each scene's caption, parts left out as ``forms`` say, as the text encoder's input."""
    texts = [training_caption(scene, rng, forms) for scene in scenes]
    return torch.tensor(
        tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True
        ).input_ids
    )


def noised(
    latents: torch.Tensor,
    scale: float,
    noise_schedule: DDPMScheduler,
    generator: torch.Generator,
    offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents drawn from their distributions (n, 2, ...: mean and std), scaled, noised at
    random timesteps: (noisy latents, the noise, the timesteps). ``offset`` adds a random
    mean per channel to the noise (none drawn at 0)."""
    mean, std = latents[:, 0], latents[:, 1]
    clean = (mean + std * torch.randn(mean.shape, generator=generator)) * scale
    noise = torch.randn(clean.shape, generator=generator)
    if offset:
        noise += offset * torch.randn((*clean.shape[:2], 1, 1), generator=generator)
    timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(latents),))
    return noise_schedule.add_noise(clean, noise, timesteps), noise, timesteps


def weighted_loss(
    predicted: torch.Tensor,
    noise: torch.Tensor,
    noise_schedule: DDPMScheduler,
    timesteps: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    errors = (predicted - noise).pow(2).mean(dim=(1, 2, 3))
    return (errors * min_snr_weights(noise_schedule, timesteps, gamma)).mean()


def optimised(
    loss: torch.Tensor, optimizer: Any, schedule: Any, parameters: Iterable[torch.nn.Parameter]
) -> None:
    """One optimiser step on ``loss``, its gradients clipped to norm 1."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(parameters), 1.0)
    optimizer.step()
    schedule.step()


@contextmanager
def reproducible(seed: int, threads: int) -> Iterator[None]:
    """Torch seeded and on ``threads`` threads (the thread count changes float sums), both
    restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(before)


def train_denoiser(pipeline: StableDiffusionPipeline, training: Training) -> None:
    rng = np.random.default_rng(training.seed + 2)
    scenes = [random_scene(rng) for _ in range(training.scenes)]
    latents = encode(pipeline, scenes)
    scale = pipeline.vae.config.scaling_factor
    unet, text_encoder = pipeline.unet.train(), pipeline.text_encoder.train()
    tokenizer = pipeline.tokenizer
    noise_schedule = DDPMScheduler.from_config(pipeline.scheduler.config)
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=training.unet_lr, weight_decay=1e-2)
    steps = training.unet_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine(step, steps, training.warmup_steps)
    )
    generator = torch.Generator().manual_seed(training.seed + 3)
    for step in range(steps):
        picked = rng.integers(0, len(scenes), size=training.unet_batch)
        tokens = caption_tokens(tokenizer, [scenes[i] for i in picked], rng, training.caption_forms)
        noisy, noise, timesteps = noised(
            latents[picked], scale, noise_schedule, generator, training.noise_offset
        )
        context = text_encoder(tokens)[0]
        predicted = unet(noisy, timesteps, context).sample
        loss = weighted_loss(predicted, noise, noise_schedule, timesteps, training.min_snr_gamma)
        optimised(loss, optimizer, schedule, parameters)
        if step % 100 == 0 or step == steps - 1:
            logger.info("denoiser step %d/%d: loss %.4f", step + 1, steps, loss.item())
    unet.eval()
    text_encoder.eval()


def state(pipeline: StableDiffusionPipeline, parts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{key}": value.detach().contiguous()
        for part in parts
        for key, value in getattr(pipeline, part).state_dict().items()
    }


def cached_stage(path: Path, pipeline: StableDiffusionPipeline, parts: tuple[str, ...]) -> bool:
    """Load a stage's weights from the work folder; False when it has not run yet."""
    if not path.exists():
        return False
    load_parts(pipeline, load_file(path), parts)
    logger.info("reusing %s", path)
    return True


def train_shapes(
    out: Path, work: Path, recipe: Recipe = SD_SHAPES, training: Training = SHAPES_TRAINING
) -> Path:
    """Train both stages (or reuse them from ``work``) and write ``out``."""
    started = time.perf_counter()
    with reproducible(training.seed, training.threads):
        pipeline = build_untrained(recipe)
        work.mkdir(parents=True, exist_ok=True)
        vae_path = work / f"vae-{stage_hash(recipe, training, 'vae')[:12]}.safetensors"
        if not cached_stage(vae_path, pipeline, ("vae",)):
            train_vae(pipeline, training)
            save_file(state(pipeline, ("vae",)), vae_path)
        scale = measure_scale(pipeline, training)
        pipeline.vae.register_to_config(scaling_factor=scale)
        train_denoiser(pipeline, training)
    weights = {key: value.half() for key, value in state(pipeline, TRAINED_PARTS).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        weights,
        out,
        metadata={"recipe": recipe_hash(recipe, training), "vae_scaling_factor": str(scale)},
    )
    logger.info(
        "wrote %s (%.1f MB) in %.0f s", out, out.stat().st_size / 1e6, time.perf_counter() - started
    )
    return out
