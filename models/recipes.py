"""Pipelines built from code: each a recipe of component configs and a seed, so the same code
gives the same weights on every machine, under a version derived from the recipe. No ML
library is imported here: the service's public process resolves a recipe's tag without torch;
``models.build`` builds the pipeline.

- ``sd-tiny`` (the embedded default): Stable Diffusion 1.x's architecture at a fraction of its
  width. Its images are noise-like, but every code path (tokenizer, text encoder, UNet, VAE,
  scheduler, ``from_pretrained``) is the one a real model takes; 64x64 in 4 steps takes well
  under a second on two CPU cores.
- ``sd15-random``: Stable Diffusion 1.5's architecture with random weights, the GPU
  benchmark's model (no download). Its images are noise; its cost per step is SD 1.5's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

MAX_TOKENS = 77  # CLIP's context length
# Stable Diffusion 1.x's own noise schedule.
SD_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "steps_offset": 1,
}
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
    scheduler: dict[str, Any] = field(default_factory=lambda: SD_SCHEDULER)
    seed: int = 0

    def version(self) -> str:
        """Changes exactly when the recipe, or the libraries that run it, change."""
        recipe = {
            "text_encoder": self.text_encoder,
            "unet": self.unet,
            "vae": self.vae,
            "scheduler": self.scheduler,
            "seed": self.seed,
            "diffusers": version("diffusers"),
            "torch": version("torch").split("+")[0],
        }
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
        return f"v1-{digest[:12]}"

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version()}"


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
EMBEDDED = SD_TINY  # what a fresh machine serves
RECIPES = {recipe.name: recipe for recipe in (SD_TINY, SD15_RANDOM)}
