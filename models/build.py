"""Build a recipe's Stable Diffusion pipeline (``models.recipes``): weights drawn from its seed,
or, for a trained recipe, read from its committed weights file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors import safe_open
from safetensors.torch import load_file
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .recipes import INPAINTING_CHANNELS, MAX_TOKENS, Recipe

TRAINED_PARTS = ("text_encoder", "unet", "vae")


def build_tokenizer(words: tuple[str, ...] = ()) -> CLIPTokenizer:
    """A byte-level BPE tokenizer: every byte is a token, as CLIP's fallback, and each of
    ``words`` one token of its own (its merges spell it left to right)."""
    alphabet = sorted(ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(ch + "</w>" for ch in alphabet)]
    merges: list[tuple[str, str]] = []
    # Longest first: a shorter word's merges (r+e for "red") would otherwise win inside a
    # longer one ("green" would split as g, re, e, n).
    for word in sorted(words, key=len, reverse=True):
        # Each merge joins the word so far with its next letter; every prefix is a token.
        pieces = [*word[:-1], word[-1] + "</w>"]
        spelled = pieces[0]
        for piece in pieces[1:]:
            if (spelled, piece) not in merges:
                merges.append((spelled, piece))
                tokens.append(spelled + piece)
            spelled += piece
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    # The tokenizers-backed BPE takes (left, right) pairs, whatever the annotation says.
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        model_max_length=MAX_TOKENS,
    )


def _seeded(seed: int, build: Any, *args: Any, **kwargs: Any) -> Any:
    # Each component draws from its own fresh seed, so changing one leaves the others' weights;
    # the caller's global RNG state is restored afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(*args, **kwargs)


def build_untrained(recipe: Recipe) -> StableDiffusionPipeline:
    """The recipe's architecture with weights drawn from its seed: identical on every call. A
    UNet that reads a mask makes an inpainting pipeline, as such checkpoints are saved."""
    tokenizer = build_tokenizer(recipe.words)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **recipe.text_encoder,
    )
    scheduler_class, scheduler_config = recipe.scheduler
    inpainting = recipe.unet["in_channels"] == INPAINTING_CHANNELS
    pipeline_class = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    return pipeline_class(
        vae=_seeded(recipe.seed, AutoencoderKL, **recipe.vae),
        text_encoder=_seeded(recipe.seed, CLIPTextModel, text_config),
        tokenizer=tokenizer,
        unet=_seeded(recipe.seed, UNet2DConditionModel, **recipe.unet),
        scheduler=getattr(diffusers, scheduler_class)(**scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def load_parts(
    pipeline: StableDiffusionPipeline, weights: dict[str, torch.Tensor], parts: tuple[str, ...]
) -> None:
    """Fill ``parts`` of the pipeline from tensors keyed ``part.name``, as
    ``models.training`` writes them (in float32, whatever they were stored as)."""
    for part in parts:
        prefix = f"{part}."
        own = {
            k.removeprefix(prefix): v.float() for k, v in weights.items() if k.startswith(prefix)
        }
        getattr(pipeline, part).load_state_dict(own, strict=True)


def load_weights(pipeline: StableDiffusionPipeline, path: Path) -> dict[str, str]:
    """Fill the pipeline's trained parts from one safetensors file; returns its metadata."""
    with safe_open(path, framework="pt") as weights:
        metadata: dict[str, str] = weights.metadata()
    load_parts(pipeline, load_file(path), TRAINED_PARTS)
    # The latents' scale is measured after the VAE is trained, so it travels with the weights.
    pipeline.vae.register_to_config(scaling_factor=float(metadata["vae_scaling_factor"]))
    return metadata


def build_pipeline(recipe: Recipe) -> StableDiffusionPipeline:
    """The recipe's pipeline, with its trained weights when it has some."""
    pipeline = build_untrained(recipe)
    if recipe.trained:
        load_weights(pipeline, recipe.weights)
    return pipeline
