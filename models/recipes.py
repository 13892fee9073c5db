"""Pipelines built from code: each a recipe of component configs and a seed, so the same code
gives the same weights on every machine, under a version derived from the recipe. No ML
library is imported here: the service's public process resolves a recipe's tag without torch;
``models.build`` builds the pipeline.

- ``sd-shapes`` (the embedded default): a small Stable Diffusion trained in this repository
  (``python -m models train-shapes``) to draw a coloured shape on a coloured background; its
  weights are committed under ``models/weights/`` and versioned by their hash.
- ``sd-tiny``: Stable Diffusion 1.x's architecture at a fraction of its width, random weights.
  Its images are noise-like, but every code path (tokenizer, text encoder, UNet, VAE,
  scheduler, ``from_pretrained``) is the one a real model takes, and 64x64 in 4 steps costs
  a few milliseconds: the plumbing tests' model.
- ``sd-tiny-inpainting``: sd-tiny with a dedicated inpainting UNet (9 input channels), for
  the tests of that path.
- ``sd15-random``: Stable Diffusion 1.5's architecture with random weights, the GPU
  benchmark's model (no download). Its images are noise; its cost per step is SD 1.5's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .shapes import WORDS as SHAPE_WORDS

MAX_TOKENS = 77  # CLIP's context length
# A dedicated inpainting UNet reads the noisy latents (4 channels), the mask (1) and the
# masked image's latents (4).
INPAINTING_CHANNELS = 9
# Stable Diffusion 1.x's own noise schedule.
SD_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}
PNDM = ("PNDMScheduler", {**SD_SCHEDULER, "skip_prk_steps": True})
DDIM = (
    "DDIMScheduler",
    # Trailing spacing starts sampling at the last training timestep, from (almost) pure
    # noise, as training saw it (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample
    # Steps are Flawed").
    {
        **SD_SCHEDULER,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "timestep_spacing": "trailing",
    },
)
WEIGHTS = Path(__file__).parent / "weights"
# Stable Diffusion's VAE shape: four blocks, a scale factor of 8.
VAE_BLOCKS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}


@dataclass(frozen=True)
class Recipe:
    name: str
    text_encoder: dict[str, Any]
    unet: dict[str, Any]
    vae: dict[str, Any]
    default_steps: int  # what the service applies to a blank `num_inference_steps`
    default_guidance_scale: float
    scheduler: tuple[str, dict[str, Any]] = PNDM  # (diffusers class, its config)
    words: tuple[str, ...] = ()  # whole-word tokens beyond the byte-level ones
    seed: int = 0
    trained: bool = False  # weights from models/weights/NAME.safetensors, else from `seed`

    def architecture(self) -> dict[str, Any]:
        return {
            "text_encoder": self.text_encoder,
            "unet": self.unet,
            "vae": self.vae,
            "scheduler": self.scheduler,
            "words": self.words,
        }

    @property
    def weights(self) -> Path:
        return WEIGHTS / f"{self.name}.safetensors"

    def version(self) -> str:
        """Changes exactly when the weights change: a trained recipe's with its weights file,
        a random one's with the recipe or the libraries that draw its weights."""
        if self.trained:
            return f"v1-{file_digest(self.weights)[:12]}"
        recipe = {
            **self.architecture(),
            "seed": self.seed,
            "diffusers": version("diffusers"),
            "torch": version("torch").split("+")[0],
        }
        return f"v1-{digest(recipe)[:12]}"

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version()}"


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@cache
def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SD_TINY_TEXT_WIDTH = 32
SD_TINY = Recipe(
    name="sd-tiny",
    text_encoder={
        "hidden_size": SD_TINY_TEXT_WIDTH,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "projection_dim": 32,
        "max_position_embeddings": MAX_TOKENS,
    },
    unet={
        "sample_size": 8,  # latent side; the VAE scales it by 8 to a 64x64 image
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": SD_TINY_TEXT_WIDTH,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
    vae={
        **VAE_BLOCKS,
        "block_out_channels": (8, 16, 16, 16),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
    },
    default_steps=4,
    default_guidance_scale=7.5,
)
# sd-tiny as a dedicated inpainting model: its UNet also reads the mask and the masked image
# (9 input channels), so it serves through diffusers' inpainting pipeline.
SD_TINY_INPAINTING = replace(
    SD_TINY, name="sd-tiny-inpainting", unet={**SD_TINY.unet, "in_channels": INPAINTING_CHANNELS}
)
SD15_RANDOM = Recipe(
    name="sd15-random",
    # CLIP ViT-L/14's text tower, as SD 1.5 uses it (the byte-level tokenizer's smaller
    # vocabulary changes the embedding table only, not the cost per token).
    text_encoder={
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "projection_dim": 768,
        "max_position_embeddings": MAX_TOKENS,
        "hidden_act": "quick_gelu",
    },
    unet={
        "sample_size": 64,  # 512x512 images
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    },
    vae={
        **VAE_BLOCKS,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "sample_size": 512,
    },
    default_steps=50,
    default_guidance_scale=7.5,
)
SHAPES_TEXT_WIDTH = 128
SD_SHAPES = Recipe(
    name="sd-shapes",
    text_encoder={
        "hidden_size": SHAPES_TEXT_WIDTH,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "projection_dim": SHAPES_TEXT_WIDTH,
        "max_position_embeddings": MAX_TOKENS,
    },
    unet={
        "sample_size": 16,  # latent side; the VAE scales it by 4 to a 64x64 image
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": SHAPES_TEXT_WIDTH,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
    vae={
        # Three blocks, a scale factor of 4 (16x16 latents): SD's 8 would leave 8x8 latents,
        # coarse for a circle 26 pixels wide.
        **VAE_BLOCKS,
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "block_out_channels": (16, 32, 64),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "mid_block_add_attention": False,
        "sample_size": 64,
    },
    scheduler=DDIM,
    words=SHAPE_WORDS,
    default_steps=20,
    # The best measured: every colour and shape right at 2, a few shapes warp from 3 on
    # (README, "The demo model"; bench.demo_model).
    default_guidance_scale=2.0,
    trained=True,
)
EMBEDDED = SD_SHAPES  # what a fresh machine serves
RECIPES = {recipe.name: recipe for recipe in (SD_SHAPES, SD_TINY, SD_TINY_INPAINTING, SD15_RANDOM)}
