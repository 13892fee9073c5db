"""Build a recipe's pipeline (``models.recipes``) in its family's shape: weights drawn from
its seed, or, for a trained recipe, read from its committed weights file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from .recipes import INPAINTING_CHANNELS, MAX_TOKENS, RECIPES, AdapterRecipe, Recipe

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


def build_t5_tokenizer() -> T5Tokenizer:
    """A character-level T5 tokenizer: every byte-level character one piece, as the CLIP
    tokenizer's alphabet, and T5's special tokens."""
    pieces = [(piece, -1.0) for piece in ["\u2581", *sorted(ByteLevel.alphabet())]]
    specials = [(token, 0.0) for token in ("<pad>", "</s>", "<unk>")]
    return T5Tokenizer(vocab=specials + pieces, extra_ids=0)


class Parts:
    """A recipe's components, each drawn from the recipe's seed."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.tokenizer = build_tokenizer(recipe.words)

    def clip(self, cls: type = CLIPTextModel, shape: dict[str, Any] | None = None) -> Any:
        config = CLIPTextConfig(
            vocab_size=len(self.tokenizer),
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            **(shape or self.recipe.text_encoder),
        )
        return _seeded(self.recipe.seed, cls, config)

    def t5(self, tokenizer: T5Tokenizer) -> T5EncoderModel:
        config = T5Config(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **(self.recipe.t5 or {}),
        )
        return _seeded(self.recipe.seed, T5EncoderModel, config)

    def denoiser(self, cls: type) -> Any:
        return _seeded(self.recipe.seed, cls, **self.recipe.denoiser)

    def vae(self) -> AutoencoderKL:
        return _seeded(self.recipe.seed, AutoencoderKL, **self.recipe.vae)

    def scheduler(self) -> Any:
        scheduler_class, scheduler_config = self.recipe.scheduler
        return getattr(diffusers, scheduler_class)(**scheduler_config)


def build_sd(parts: Parts) -> DiffusionPipeline:
    """A UNet that reads a mask makes an inpainting pipeline, as such checkpoints are saved."""
    inpainting = parts.recipe.denoiser["in_channels"] == INPAINTING_CHANNELS
    pipeline_class = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    return pipeline_class(
        vae=parts.vae(),
        text_encoder=parts.clip(),
        tokenizer=parts.tokenizer,
        unet=parts.denoiser(UNet2DConditionModel),
        scheduler=parts.scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl(parts: Parts) -> DiffusionPipeline:
    return StableDiffusionXLPipeline(
        vae=parts.vae(),
        text_encoder=parts.clip(),
        # The second encoder's pooled projection joins the size conditioning.
        text_encoder_2=parts.clip(CLIPTextModelWithProjection, parts.recipe.text_encoder_2),
        tokenizer=parts.tokenizer,
        tokenizer_2=parts.tokenizer,
        unet=parts.denoiser(UNet2DConditionModel),
        scheduler=parts.scheduler(),
        add_watermarker=False,
    )


def build_sd3(parts: Parts) -> DiffusionPipeline:
    t5_tokenizer = build_t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=parts.denoiser(SD3Transformer2DModel),
        scheduler=parts.scheduler(),
        vae=parts.vae(),
        text_encoder=parts.clip(CLIPTextModelWithProjection),
        tokenizer=parts.tokenizer,
        text_encoder_2=parts.clip(CLIPTextModelWithProjection),
        tokenizer_2=parts.tokenizer,
        text_encoder_3=parts.t5(t5_tokenizer),
        tokenizer_3=t5_tokenizer,
    )


def build_flux(parts: Parts) -> DiffusionPipeline:
    t5_tokenizer = build_t5_tokenizer()
    return FluxPipeline(
        scheduler=parts.scheduler(),
        vae=parts.vae(),
        text_encoder=parts.clip(),
        tokenizer=parts.tokenizer,
        text_encoder_2=parts.t5(t5_tokenizer),
        tokenizer_2=t5_tokenizer,
        transformer=parts.denoiser(FluxTransformer2DModel),
    )


BUILDERS = {"sd": build_sd, "sdxl": build_sdxl, "sd3": build_sd3, "flux": build_flux}


def build_untrained(recipe: Recipe) -> DiffusionPipeline:
    """The recipe's architecture with weights drawn from its seed: identical on every call."""
    return BUILDERS[recipe.family](Parts(recipe))


def build_lora(recipe: AdapterRecipe, directory: Path) -> None:
    """Write the adapter recipe's LoRA into ``directory``, as diffusers saves one: random
    low-rank updates (both factors drawn, so it changes the output) of the base UNet's
    attention projections."""
    base = build_pipeline(RECIPES[recipe.base])
    config = LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.alpha,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        init_lora_weights=False,
    )
    _seeded(recipe.seed, base.unet.add_adapter, config)
    type(base).save_lora_weights(
        directory,
        unet_lora_layers=get_peft_model_state_dict(base.unet),
        # Saved with the weights, or a loader would take alpha to be the rank.
        unet_lora_adapter_metadata=config.to_dict(),
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


def build_pipeline(recipe: Recipe) -> DiffusionPipeline:
    """The recipe's pipeline, with its trained weights when it has some."""
    pipeline = build_untrained(recipe)
    if recipe.trained:
        load_weights(pipeline, recipe.weights)
    return pipeline
