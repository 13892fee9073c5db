"""``sd-tiny``: a complete Stable Diffusion pipeline built from code, so a fresh machine serves
without downloading anything.

Every component has the architecture of Stable Diffusion 1.x at a fraction of the width, with
weights drawn from a fixed seed: the same code gives the same weights on every machine. Its
images are noise-like, but every code path (tokenizer, text encoder, UNet, VAE, scheduler,
``from_pretrained``) is the one a real model takes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

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
        "diffusers": diffusers.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return f"v1-{digest[:12]}"


def build_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE tokenizer with no merges: every byte is a token, as CLIP's fallback."""
    alphabet = sorted(ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(ch + "</w>" for ch in alphabet)]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def _seeded(build: Any, *args: Any, **kwargs: Any) -> Any:
    # Each component draws from its own fresh seed, so changing one leaves the others' weights;
    # the caller's global RNG state is restored afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build(*args, **kwargs)


def build_pipeline(
    text_encoder: dict[str, Any], unet: dict[str, Any], vae: dict[str, Any]
) -> StableDiffusionPipeline:
    """A Stable Diffusion pipeline of the given component configs, seeded weights, the byte-level
    tokenizer and SD 1.x's scheduler."""
    tokenizer = build_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1, pad_token_id=1, **text_encoder
    )
    return StableDiffusionPipeline(
        vae=_seeded(AutoencoderKL, **vae),
        text_encoder=_seeded(CLIPTextModel, text_config),
        tokenizer=tokenizer,
        unet=_seeded(UNet2DConditionModel, **unet),
        scheduler=PNDMScheduler(**SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_embedded_pipeline() -> StableDiffusionPipeline:
    """The ``sd-tiny`` pipeline, identical weights on every call."""
    return build_pipeline(TEXT_ENCODER, UNET, VAE)
