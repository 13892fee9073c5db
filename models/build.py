"""Build Stable Diffusion pipelines from component configs, with weights drawn from a fixed
seed: ``sd-tiny`` from its recipe in ``models.embedded``, SD 1.5's architecture in
``models.sd15``."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .embedded import MAX_TOKENS, SCHEDULER, SEED, TEXT_ENCODER, UNET, VAE


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
