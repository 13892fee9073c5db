"""``sd-tiny``: a complete Stable Diffusion pipeline built from code, so a fresh machine serves
without downloading anything.

Every component has the architecture of Stable Diffusion 1.x at a fraction of the width, with
weights drawn from a fixed seed: the same code gives the same weights on every machine. Its
images are noise-like, but every code path (tokenizer, text encoder, UNet, VAE, scheduler,
``from_pretrained``) is the one a real model takes.

This module is the recipe and imports no ML library: the service's public process resolves
the model's tag from it without loading torch. ``models.build`` builds the pipeline.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from typing import Any

EMBEDDED_NAME = "sd-tiny"
SEED = 0
MAX_TOKENS = 77
# The defaults the service applies to blank request fields; 64x64 in 4 steps takes well under
# a second on two CPU cores.
DEFAULT_STEPS = 4
DEFAULT_GUIDANCE_SCALE = 7.5

TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
    "max_position_embeddings": MAX_TOKENS,
}
UNET: dict[str, Any] = {
    "sample_size": 8,  # latent side; the VAE scales it by 8 to a 64x64 image
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": TEXT_ENCODER["hidden_size"],
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (8, 16, 16, 16),  # four blocks: a scale factor of 8, as in SD
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
# Stable Diffusion 1.x's own noise schedule.
SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "steps_offset": 1,
}


def embedded_version() -> str:
    """A version that changes exactly when the recipe (or the library that runs it) changes."""
    recipe = {
        "text_encoder": TEXT_ENCODER,
        "unet": UNET,
        "vae": VAE,
        "scheduler": SCHEDULER,
        "seed": SEED,
        "diffusers": version("diffusers"),
        "torch": version("torch").split("+")[0],
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return f"v1-{digest[:12]}"
