"""Stable Diffusion 1.5's architecture with random weights: the GPU benchmark's model, built
from code (no download). Its images are noise; its cost per step is SD 1.5's.

    python -m models sd15-random        # stores it as sd15-random, then IMAGEGEN_MODEL=sd15-random
"""

from __future__ import annotations

from typing import Any

from diffusers import StableDiffusionPipeline

from .build import build_pipeline
from .embedded import MAX_TOKENS

NAME = "sd15-random"
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE_SCALE = 7.5

# CLIP ViT-L/14's text tower, as SD 1.5 uses it (the byte-level tokenizer's smaller vocabulary
# changes the embedding table only, not the cost per token).
TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "max_position_embeddings": MAX_TOKENS,
    "hidden_act": "quick_gelu",
}
UNET: dict[str, Any] = {
    "sample_size": 64,  # 512x512 images
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "sample_size": 512,
}


def build_sd15_pipeline() -> StableDiffusionPipeline:
    return build_pipeline(TEXT_ENCODER, UNET, VAE)
