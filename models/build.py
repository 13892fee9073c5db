"""Build a recipe's Stable Diffusion pipeline (``models.recipes``), weights drawn from its seed."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .recipes import MAX_TOKENS, Recipe


def build_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE tokenizer with no merges: every byte is a token, as CLIP's fallback."""
    alphabet = sorted(ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(ch + "</w>" for ch in alphabet)]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def _seeded(seed: int, build: Any, *args: Any, **kwargs: Any) -> Any:
    # Each component draws from its own fresh seed, so changing one leaves the others' weights;
    # the caller's global RNG state is restored afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(*args, **kwargs)


def build_pipeline(recipe: Recipe) -> StableDiffusionPipeline:
    """The recipe's pipeline: identical weights on every call, the byte-level tokenizer and
    SD 1.x's scheduler."""
    tokenizer = build_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **recipe.text_encoder,
    )
    return StableDiffusionPipeline(
        vae=_seeded(recipe.seed, AutoencoderKL, **recipe.vae),
        text_encoder=_seeded(recipe.seed, CLIPTextModel, text_config),
        tokenizer=tokenizer,
        unet=_seeded(recipe.seed, UNet2DConditionModel, **recipe.unet),
        scheduler=PNDMScheduler(**recipe.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
